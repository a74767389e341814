"""Loss study: train many tiny runs over a grid and record how every loss and the gradient behave.

Reproduces the classic CE-vs-Dice experiment (G. Chlebus, "Semantic segmentation loss
functions", 2018): inputs are uniform noise, a pixel is foreground when its value exceeds
t = 1 - fg_ratio, so the class balance is set exactly; a few-layer conv net can learn the
rule because it is local. The grid is foreground ratios x losses x batch norm on/off x
optimiser. The same machinery runs on the real Pet slice (`data.source: pet`), where the
thin trimap `border` class is the minority.

    python -m seg_pet study --config configs/study.yaml [--set grid.losses=[ce,dice]] [--overwrite]

Outputs in <study.output_dir>/<study.name>/: study_config.yaml, runs.csv (one row per run:
settings, final value of every loss on held-out data, foreground IoU/Dice, converged),
steps.csv (per run and step: every loss on the training batch before the update, the global
gradient norm, the batch's foreground and lowest per-class IoU),
loss_curves.png, grad_norm_curves.png, final_iou_heatmap.png. Every file is written
atomically; runs.csv and steps.csv are rewritten after each run, so an interrupted
study keeps the runs it finished.

Every run with the same foreground ratio sees the same batches in the same order, and every
run with the same architecture and BN setting starts from the same weights, so the
comparison between losses and optimisers is paired, not confounded by luck of the draw.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import yaml
from torch import nn
from tqdm import tqdm

from seg_pet.config import LossConfig, _build_section, _suggest, apply_override, read_yaml
from seg_pet.errors import ConfigError, SegPetError
from seg_pet.fileio import atomic_write
from seg_pet.losses import BACKGROUND, LOSS_NAMES, build_loss, compute_class_weights, needs_class_weights, validate_loss_options
from seg_pet.metrics import ConfusionMatrix, batch_metrics, compute_metrics
from seg_pet.train import resolve_device
from seg_pet.visualisation import new_figure, save_figure

TOY_CLASSES = ["foreground", BACKGROUND]  # same order as the Pet classes: the object first, background second
FOREGROUND_ID, BACKGROUND_ID = 0, 1
PET_FOCUS = "border"  # the minority class of the 3-class trimap task (~12 % of pixels)
CONFIG_NAME = "study_config.yaml"


# --------------------------------------------------------------------------- config


@dataclass
class StudySection:
    name: str = "loss_study"
    output_dir: str = "outputs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    converged_min_iou: float = 0.9  # see is_converged
    cpu_threads: Optional[int] = 1  # torch intra-op threads on CPU; null = torch's default (all cores)


@dataclass
class StudyDataConfig:
    source: str = "toy"  # toy (thresholded noise) | pet (the real trimaps, border as minority)
    image_size: int = 32
    batch_size: int = 8
    fg_ratios: list[float] = field(default_factory=lambda: [0.05, 0.5, 0.95])  # toy only
    eval_images: int = 64  # toy only: held-out noise images scored at the end of each run
    root: str = "../shared/data"  # pet only: the folder that holds oxford-iiit-pet/
    val_fraction: float = 0.2  # pet only: share of trainval held out and scored at the end


@dataclass
class StudyModelConfig:
    arch: str = "tiny"  # tiny (a few 3x3 convs) | unet (smp Unet, random init)
    channels: int = 16  # tiny only
    layers: int = 3  # tiny only: number of 3x3 conv layers before the 1x1 classifier
    encoder: str = "resnet18"  # unet only
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])  # unet only (smp's default)


@dataclass
class StudyGridConfig:
    losses: list[str] = field(default_factory=lambda: ["ce", "dice", "dice_sq", "dice_fg", "dice_fg_sq"])
    batch_norm: list[bool] = field(default_factory=lambda: [False, True])
    optimizers: list[str] = field(default_factory=lambda: ["adam", "sgd"])


@dataclass
class StudyOptimConfig:
    steps: int = 250
    adam_lr: float = 3e-3
    sgd_lr: float = 0.1
    sgd_momentum: float = 0.9


@dataclass
class StudyConfig:
    study: StudySection = field(default_factory=StudySection)
    data: StudyDataConfig = field(default_factory=StudyDataConfig)
    model: StudyModelConfig = field(default_factory=StudyModelConfig)
    grid: StudyGridConfig = field(default_factory=StudyGridConfig)
    optim: StudyOptimConfig = field(default_factory=StudyOptimConfig)

    @property
    def out_dir(self) -> Path:
        return Path(self.study.output_dir) / self.study.name


# Keys that only mean something for one data source or architecture: setting one for the
# other is an error (as with loss options), so a config never silently ignores a setting.
_ONLY_FOR = {
    "data.fg_ratios": ("data.source", "toy"),
    "data.eval_images": ("data.source", "toy"),
    "data.root": ("data.source", "pet"),
    "data.val_fraction": ("data.source", "pet"),
    "model.channels": ("model.arch", "tiny"),
    "model.layers": ("model.arch", "tiny"),
    "model.encoder": ("model.arch", "unet"),
    "model.decoder_channels": ("model.arch", "unet"),
}
OPTIMIZERS = ("adam", "sgd")


def load_study_config(path: str | Path | None, overrides: Iterable[str] = ()) -> StudyConfig:
    """Read a study YAML (or only defaults when `path` is None), apply `--set` overrides, validate."""
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return study_config_from_dict(raw)


def study_config_from_dict(raw: dict[str, Any]) -> StudyConfig:
    sections = {f.name: f.default_factory for f in dataclasses.fields(StudyConfig)}  # type: ignore[misc]
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown study config section {section!r}{_suggest(section, sections)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of keys, got {type(values).__name__}")
    built = {name: _build_section(name, cls, raw.get(name) or {}) for name, cls in sections.items()}
    cfg = StudyConfig(**built)
    for key, (selector, wanted) in _ONLY_FOR.items():
        section, name = key.split(".")
        sel_section, sel_name = selector.split(".")
        if name in (raw.get(section) or {}) and getattr(getattr(cfg, sel_section), sel_name) != wanted:
            raise ConfigError(f"{key} applies only to {selector}: {wanted}; remove it")
    validate_study(cfg)
    return cfg


def study_config_to_dict(cfg: StudyConfig) -> dict[str, Any]:
    """The config as a dict without the keys that do not apply, so the saved file loads again."""
    raw = dataclasses.asdict(cfg)
    for key, (selector, wanted) in _ONLY_FOR.items():
        section, name = key.split(".")
        sel_section, sel_name = selector.split(".")
        if raw[sel_section][sel_name] != wanted:
            del raw[section][name]
    return raw


def class_names_for(source: str) -> list[str]:
    if source == "toy":
        return list(TOY_CLASSES)
    from seg_pet.data import class_names

    return class_names("class")


def focus_class(source: str) -> str:
    """The class reported as fg_iou / fg_dice: the toy foreground, or the Pet border (the minority)."""
    return TOY_CLASSES[FOREGROUND_ID] if source == "toy" else PET_FOCUS


def validate_study(cfg: StudyConfig) -> None:
    """Values that type-check but cannot work. Each error names its key."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key}: {message}")

    def check_list(key: str, values: list, choices: Iterable) -> None:
        choices = list(choices)
        if not values:
            fail(key, f"must list at least one of {', '.join(map(str, choices))}")
        for v in values:
            if v not in choices:
                fail(key, f"unknown value {v!r}{_suggest(v, [str(c) for c in choices])}")
        if len(set(values)) != len(values):
            fail(key, f"lists a value twice: {values}")

    s, d, m, g, o = cfg.study, cfg.data, cfg.model, cfg.grid, cfg.optim
    if not s.name or "/" in s.name or s.name in (".", ".."):
        fail("study.name", f"must be a plain folder name, got {s.name!r}")
    if not (s.device in ("auto", "cpu", "cuda") or (s.device.startswith("cuda:") and s.device[5:].isdigit())):
        fail("study.device", f"must be auto, cpu, cuda or cuda:N; got {s.device!r}")
    if s.cpu_threads is not None and s.cpu_threads < 1:
        fail("study.cpu_threads", f"must be >= 1 or null, got {s.cpu_threads}")
    if not 0.0 < s.converged_min_iou <= 1.0:
        fail("study.converged_min_iou", f"must be in (0, 1], got {s.converged_min_iou}")
    if d.source not in ("toy", "pet"):
        fail("data.source", f"must be one of toy, pet; got {d.source!r}")
    if m.arch not in ("tiny", "unet"):
        fail("model.arch", f"must be one of tiny, unet; got {m.arch!r}")
    if not d.fg_ratios:
        fail("data.fg_ratios", "must list at least one foreground ratio")
    for r in d.fg_ratios:
        if not 0.0 < r < 1.0:
            fail("data.fg_ratios", f"every ratio must be between 0 and 1 (exclusive), got {r}")
    if len(set(d.fg_ratios)) != len(d.fg_ratios):
        fail("data.fg_ratios", f"lists a ratio twice: {d.fg_ratios}")
    if m.arch == "unet" and (d.image_size < 32 or d.image_size % 32):
        fail("data.image_size", f"must be a positive multiple of 32 for model.arch: unet (it downsamples 5 times), got {d.image_size}")
    if d.image_size < 4:
        fail("data.image_size", f"must be >= 4, got {d.image_size}")
    if d.batch_size < 1:
        fail("data.batch_size", f"must be >= 1, got {d.batch_size}")
    if d.eval_images < 1:
        fail("data.eval_images", f"must be >= 1, got {d.eval_images}")
    if not 0.0 < d.val_fraction < 1.0:
        fail("data.val_fraction", f"must be between 0 and 1 (exclusive), got {d.val_fraction}")
    if m.channels < 1:
        fail("model.channels", f"must be >= 1, got {m.channels}")
    if m.layers < 1:
        fail("model.layers", f"must be >= 1, got {m.layers}")
    if len(m.decoder_channels) != 5 or min(m.decoder_channels) < 1:
        fail("model.decoder_channels", f"must be 5 numbers >= 1 (one per decoder stage), got {m.decoder_channels}")
    check_list("grid.losses", g.losses, LOSS_NAMES)
    names = class_names_for(d.source)
    for loss in g.losses:
        try:
            validate_loss_options(LossConfig(name=loss), names)
        except ConfigError as exc:
            fail("grid.losses", str(exc))
    check_list("grid.batch_norm", g.batch_norm, (False, True))
    check_list("grid.optimizers", g.optimizers, OPTIMIZERS)
    if o.steps < 1:
        fail("optim.steps", f"must be >= 1, got {o.steps}")
    for key in ("adam_lr", "sgd_lr"):
        if getattr(o, key) <= 0:
            fail(f"optim.{key}", f"must be > 0, got {getattr(o, key)}")
    if not 0.0 <= o.sgd_momentum < 1.0:
        fail("optim.sgd_momentum", f"must be in [0, 1), got {o.sgd_momentum}")


# --------------------------------------------------------------------------- data


@dataclass
class StudyTask:
    """One row of the grid: a fixed training stream and a held-out set, shared by every run in the row."""

    label: str  # row label in plots, e.g. "fg 5%" or "border 12%"
    fg_ratio: float  # share of the focus class among training pixels (toy: as requested)
    class_names: list[str]
    focus: str
    in_channels: int
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step -> (x, y) on the device
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    pixel_counts: list[int]  # per class over the training data, for wce's weights


def make_noise_batch(n: int, size: int, fg_ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float (n, 1, size, size) uniform in [0, 1), y int64 (n, size, size)).

    A pixel is foreground when x > t = 1 - fg_ratio; for uniform x, P(x > t) = fg_ratio.
    """
    x = torch.rand(n, 1, size, size, generator=generator)
    y = torch.where(x[:, 0] > 1.0 - fg_ratio, FOREGROUND_ID, BACKGROUND_ID).long()
    return x, y


def _ratio_seed(seed: int, fg_ratio: float) -> int:
    return seed * 1_000_003 + round(fg_ratio * 1e6)


def toy_task(cfg: StudyConfig, fg_ratio: float, device: torch.device) -> StudyTask:
    size, batch_size = cfg.data.image_size, cfg.data.batch_size
    base = _ratio_seed(cfg.study.seed, fg_ratio)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # One generator per step: batch `step` is the same for every run, whatever ran before.
        x, y = make_noise_batch(batch_size, size, fg_ratio, torch.Generator().manual_seed(base + 7919 * (step + 1)))
        return x.to(device), y.to(device)

    eval_x, eval_y = make_noise_batch(cfg.data.eval_images, size, fg_ratio, torch.Generator().manual_seed(base))
    counts = torch.zeros(2, dtype=torch.int64)
    for step in range(min(cfg.optim.steps, 16)):  # the stream is i.i.d.; a few batches estimate its balance
        counts += torch.bincount(batch(step)[1].flatten().cpu(), minlength=2)
    return StudyTask(
        label=f"fg {100 * fg_ratio:g}%", fg_ratio=fg_ratio, class_names=list(TOY_CLASSES), focus=TOY_CLASSES[FOREGROUND_ID],
        in_channels=1, batch=batch, eval_x=eval_x.to(device), eval_y=eval_y.to(device), pixel_counts=counts.tolist(),
    )


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.stack(masks)


def pet_task(cfg: StudyConfig, device: torch.device) -> StudyTask:
    """The 3-class trimap task (pet, background, border) on the real slice; border is the minority.

    Images are decoded once, resized to image_size (no random crop: the study is about the loss,
    and a fixed set makes runs comparable) and kept in memory; the only augmentation is a
    seeded horizontal flip, identical for every run.
    """
    from seg_pet.config import Config, DataConfig, RunConfig
    from seg_pet.data import build_datasets
    from seg_pet.transforms import eval_transforms

    d = cfg.data
    data_cfg = Config(run=RunConfig(seed=cfg.study.seed),
                      data=DataConfig(source="oxford", root=d.root, image_size=d.image_size, border="class", val_fraction=d.val_fraction))
    datasets = build_datasets(data_cfg)
    for ds in datasets.values():
        ds.transforms = eval_transforms(d.image_size)
    train_x, train_y = _stack(datasets["train"])
    eval_x, eval_y = _stack(datasets["val"])
    names = class_names_for("pet")
    counts = torch.bincount(train_y.flatten(), minlength=len(names))[: len(names)].tolist()
    focus = names.index(PET_FOCUS)
    share = counts[focus] / max(sum(counts), 1)

    # The batch schedule: epoch-wise shuffles and per-image flips, drawn once from the seed.
    g = torch.Generator().manual_seed(cfg.study.seed)
    n = len(train_x)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(cfg.optim.steps * d.batch_size / n) + 1)])
    flips = torch.rand(len(order), generator=g) < 0.5
    train_x, train_y = train_x.to(device), train_y.to(device)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = slice(step * d.batch_size, (step + 1) * d.batch_size)
        idx, flip = order[sl].to(device), flips[sl].to(device)
        x, y = train_x[idx], train_y[idx]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        return x, y

    return StudyTask(
        label=f"{PET_FOCUS} {100 * share:.0f}%", fg_ratio=share, class_names=names, focus=PET_FOCUS,
        in_channels=3, batch=batch, eval_x=eval_x.to(device), eval_y=eval_y.to(device), pixel_counts=counts,
    )


# --------------------------------------------------------------------------- model


def build_tiny_net(in_channels: int, num_classes: int, channels: int, layers: int, batch_norm: bool) -> nn.Sequential:
    """`layers` x (3x3 conv -> [BN] -> ReLU), then a 1x1 conv to class logits.

    With BN the convs have no bias (BN's shift replaces it), as in every BN network.
    """
    modules: list[nn.Module] = []
    c_in = in_channels
    for _ in range(layers):
        modules.append(nn.Conv2d(c_in, channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            modules.append(nn.BatchNorm2d(channels))
        modules.append(nn.ReLU(inplace=True))
        c_in = channels
    modules.append(nn.Conv2d(c_in, num_classes, 1))
    return nn.Sequential(*modules)


def build_study_model(cfg: StudyModelConfig, in_channels: int, num_classes: int, batch_norm: bool) -> nn.Module:
    if cfg.arch == "tiny":
        return build_tiny_net(in_channels, num_classes, cfg.channels, cfg.layers, batch_norm)
    import segmentation_models_pytorch as smp

    try:
        model = smp.Unet(encoder_name=cfg.encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes,
                         decoder_channels=tuple(cfg.decoder_channels), decoder_use_norm="batchnorm" if batch_norm else False)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"model.encoder: {str(exc).splitlines()[0]}") from None
    if not batch_norm:
        # The ResNet encoder has BN after every conv; "without BN" has to remove those too.
        _strip_batch_norm(model)
    return model


def _strip_batch_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _strip_batch_norm(child)


def build_optimizer(name: str, cfg: StudyOptimConfig, params) -> tuple[torch.optim.Optimizer, float]:
    # Constant learning rate, no weight decay: the study compares losses, not schedules.
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.adam_lr), cfg.adam_lr
    return torch.optim.SGD(params, lr=cfg.sgd_lr, momentum=cfg.sgd_momentum), cfg.sgd_lr


# --------------------------------------------------------------------------- one run


def is_converged(class_iou: dict[str, float], min_iou: float, finite: bool = True) -> bool:
    """The convergence rule: the run stayed finite and EVERY class has final IoU >= min_iou.

    Every class, not only the foreground: at 95 % foreground, predicting foreground
    everywhere already scores foreground IoU 0.95 (and at 5 % the same trick for
    background scores 0.95 background IoU), so a one-class threshold would count a
    collapsed model as converged; that model's other class has IoU 0. A class absent from
    both target and prediction (IoU NaN) is not scored; with no scored class nothing converged.
    """
    scored = [v for v in class_iou.values() if v is not None and not math.isnan(v)]
    return bool(finite and scored and min(scored) >= min_iou)


COLLAPSED_BELOW = 0.1  # a class scored below this IoU is (almost) never predicted where it is


def run_outcome(class_iou: dict[str, float], min_iou: float, finite: bool = True) -> str:
    """diverged (non-finite) | converged (is_converged) | collapsed (some class IoU < 0.1: the
    model predicts essentially one class there) | partial (learned every class, not well enough)."""
    if not finite:
        return "diverged"
    if is_converged(class_iou, min_iou, finite):
        return "converged"
    scored = [v for v in class_iou.values() if v is not None and not math.isnan(v)]
    return "collapsed" if not scored or min(scored) < COLLAPSED_BELOW else "partial"


def build_losses(names: list[str], task: StudyTask, device: torch.device) -> dict[str, nn.Module]:
    losses = {}
    for name in names:
        loss_cfg = LossConfig(name=name)
        weights = compute_class_weights("inverse", task.pixel_counts) if needs_class_weights(loss_cfg) else None
        losses[name] = build_loss(loss_cfg, task.class_names, class_weights=weights).to(device)
    return losses


def global_grad_norm(model: nn.Module) -> float:
    """L2 norm of all parameter gradients together; with max_norm=inf clip_grad_norm_ only measures it."""
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=math.inf))


def train_run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: StudyTask,
    trained: str,
    losses: dict[str, nn.Module],
    steps: int,
) -> tuple[list[dict[str, Any]], bool]:
    """Train on `trained`; per step record every loss (training batch, before the update) and the grad norm.

    Returns (step rows, finite); stops at the first non-finite loss or gradient.
    """
    rows = []
    model.train()
    for step in range(steps):
        x, y = task.batch(step)
        logits = model(x)
        loss = losses[trained](logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = global_grad_norm(model)
        with torch.no_grad():
            detached = logits.detach()
            row: dict[str, Any] = {"step": step + 1}
            row.update({f"loss_{name}": float(fn(detached, y)) for name, fn in losses.items()})
            row["grad_norm"] = grad_norm
            ious = batch_metrics(detached, y, task.class_names)["iou"]
            scored = [v for v in ious.values() if not math.isnan(v)]
            row["batch_fg_iou"] = ious[task.focus]
            # The convergence quantity, per step: at 95 % foreground the fg IoU alone hides a collapse.
            row["batch_min_iou"] = min(scored) if scored else math.nan
        rows.append(row)
        if not (math.isfinite(row[f"loss_{trained}"]) and math.isfinite(grad_norm)):
            return rows, False
        optimizer.step()
    return rows, True


@torch.no_grad()
def evaluate_run(model: nn.Module, task: StudyTask, losses: dict[str, nn.Module], chunk: int = 64) -> dict[str, Any]:
    """Every loss, the confusion-matrix metrics and the predicted focus share on the held-out set (eval mode)."""
    model.eval()
    logits = torch.cat([model(task.eval_x[i : i + chunk]) for i in range(0, len(task.eval_x), chunk)])
    out: dict[str, Any] = {f"loss_{name}": float(fn(logits, task.eval_y)) for name, fn in losses.items()}
    matrix = ConfusionMatrix(len(task.class_names))
    matrix.update(task.eval_y, logits.argmax(1))
    out["metrics"] = compute_metrics(matrix.mat, task.class_names)
    return out


# --------------------------------------------------------------------------- outputs


def runs_columns(loss_names: list[str], class_names: list[str]) -> list[str]:
    return [
        "run_id", "source", "fg_ratio", "loss", "batch_norm", "optimizer", "lr", "steps", "steps_done",
        *(f"loss_{n}" for n in loss_names),
        "fg_iou", "fg_dice", "miou", "min_iou", *(f"iou_{c}" for c in class_names), "pred_fg_share",
        "grad_norm_first", "grad_norm_median", "grad_norm_last", "converged", "outcome", "diverged", "seconds",
    ]


def steps_columns(loss_names: list[str]) -> list[str]:
    return ["run_id", "step", *(f"loss_{n}" for n in loss_names), "grad_norm", "batch_fg_iou", "batch_min_iou"]


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _tail_mean(values: list[float], frac: float = 0.1) -> float:
    tail = [v for v in values[-max(1, int(len(values) * frac)):] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else math.nan


def summary_row(run: dict[str, Any], task: StudyTask, steps: list[dict[str, Any]], finite: bool, result: dict[str, Any] | None,
                min_iou: float) -> dict[str, Any]:
    grads = [r["grad_norm"] for r in steps]
    row = dict(run)
    row.update(steps_done=len(steps), diverged=not finite,
               grad_norm_first=grads[0] if grads else math.nan, grad_norm_median=_median(grads), grad_norm_last=_tail_mean(grads))
    if result is None:  # diverged: no meaningful model to score
        row.update(converged=False, outcome="diverged")
        return row
    m = result["metrics"]
    row.update({k: v for k, v in result.items() if k.startswith("loss_")})
    row.update(fg_iou=m["iou"][task.focus], fg_dice=m["dice"][task.focus], miou=m["miou"],
               pred_fg_share=m["pred_share"][task.focus])
    row.update({f"iou_{c}": m["iou"][c] for c in task.class_names})
    scored = [v for v in m["iou"].values() if not math.isnan(v)]
    row["min_iou"] = min(scored) if scored else math.nan
    row["converged"] = is_converged(m["iou"], min_iou, finite)
    row["outcome"] = run_outcome(m["iou"], min_iou, finite)
    return row


# --------------------------------------------------------------------------- plots

_LINE_STYLES = {  # (batch_norm, optimizer) -> colour, dash
    (True, "adam"): ("tab:blue", "-"),
    (True, "sgd"): ("tab:blue", "--"),
    (False, "adam"): ("tab:orange", "-"),
    (False, "sgd"): ("tab:orange", "--"),
}


_OUTCOME_TAGS = {"converged": "\u2713", "partial": "partial", "collapsed": "collapsed"}


def _combo_label(batch_norm: bool, optimizer: str) -> str:
    return f"{'BN' if batch_norm else 'no BN'}, {optimizer.upper() if optimizer == 'sgd' else optimizer.capitalize()}"


def plot_step_grid(runs: list[dict[str, Any]], steps_by_run: dict[int, list[dict[str, Any]]], rows: list[tuple[float, str]],
                   losses: list[str], value: str, title: str, path: Path, log_y: bool = False) -> None:
    """Rows = foreground ratio, columns = trained loss, one line per (BN, optimiser).

    value: "trained" plots each run's own training loss; otherwise a steps.csv column (grad_norm).
    """
    fig = new_figure(2.7 * len(losses) + 0.8, 2.2 * len(rows) + 1.1)
    axes = fig.subplots(len(rows), len(losses), squeeze=False, sharex=True)
    for i, (ratio, label) in enumerate(rows):
        for j, loss in enumerate(losses):
            ax = axes[i][j]
            for run in runs:
                if run["fg_ratio"] != ratio or run["loss"] != loss:
                    continue
                key = f"loss_{loss}" if value == "trained" else value
                steps = steps_by_run.get(run["run_id"], [])
                xs = [r["step"] for r in steps]
                ys = [r[key] if math.isfinite(r[key]) and (not log_y or r[key] > 0) else math.nan for r in steps]
                colour, dash = _LINE_STYLES[(run["batch_norm"], run["optimizer"])]
                ax.plot(xs, ys, color=colour, linestyle=dash, linewidth=1.1,
                        label=_combo_label(run["batch_norm"], run["optimizer"]))
            if log_y:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(f"trained on {loss}", fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("step", fontsize=8)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    save_figure(fig, path)


def plot_iou_heatmap(runs: list[dict[str, Any]], rows: list[tuple[float, str]], losses: list[str], batch_norm: list[bool],
                     optimizers: list[str], focus: str, min_iou: float, path: Path) -> None:
    """One panel per (BN, optimiser): rows = foreground ratio, columns = trained loss, colour = final fg IoU.

    Each cell also names the run's outcome (check = converged), because a high foreground IoU
    alone can hide a collapse: at 95 % foreground, "everything is foreground" scores 0.95.
    """
    import numpy as np

    fig = new_figure(1.2 * len(losses) * len(optimizers) + 1.8, 0.75 * len(rows) * len(batch_norm) + 1.6, layout="constrained")
    axes = fig.subplots(len(batch_norm), len(optimizers), squeeze=False)
    image = None
    for bi, bn in enumerate(batch_norm):
        for oi, opt in enumerate(optimizers):
            ax = axes[bi][oi]
            grid = np.full((len(rows), len(losses)), np.nan)
            marks = {}
            for run in runs:
                if run["batch_norm"] != bn or run["optimizer"] != opt:
                    continue
                i = [r for r, _ in rows].index(run["fg_ratio"])
                j = losses.index(run["loss"])
                value = run.get("fg_iou", math.nan)
                grid[i, j] = value if value is not None else math.nan
                marks[(i, j)] = run["outcome"]
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            for (i, j), outcome in marks.items():
                v = grid[i, j]
                value = "n/a" if math.isnan(v) else f"{v:.2f}"
                text = "NaN loss" if outcome == "diverged" else f"{value}\n{_OUTCOME_TAGS.get(outcome, outcome)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="black" if not math.isnan(v) and v > 0.6 else "white")
            ax.set_xticks(range(len(losses)), labels=losses, fontsize=7, rotation=30)
            ax.set_yticks(range(len(rows)), labels=[label for _, label in rows], fontsize=7)
            ax.set_title(_combo_label(bn, opt), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label=f"final {focus} IoU")
    fig.suptitle(f"final {focus} IoU on held-out data; \u2713 converged (every class IoU >= {min_iou:g}), "
                 f"collapsed = some class IoU < {COLLAPSED_BELOW:g}", fontsize=9)
    save_figure(fig, path)


# --------------------------------------------------------------------------- the workflow


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise SegPetError(f"study folder {out_dir} already exists; replace it with --overwrite, or choose another study.name")
        if not (out_dir / CONFIG_NAME).is_file():
            raise SegPetError(f"--overwrite: {out_dir} is not a study folder (no {CONFIG_NAME}); refusing to delete it")


def run_study(config_path: str | Path | None, overrides: Iterable[str] = (), *, overwrite: bool = False,
              log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Run the whole grid; returns the output folder. Bad input fails before anything is written."""
    cfg = load_study_config(config_path, list(overrides))
    out_dir = cfg.out_dir
    check_out_dir(out_dir, overwrite)
    device = resolve_device(cfg.study.device, key="study.device")
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.study.cpu_threads is not None:
        torch.set_num_threads(cfg.study.cpu_threads)
    try:
        return _run_grid(cfg, device, log, progress)
    finally:
        torch.set_num_threads(threads)  # a global setting: leave it as the caller had it


def _run_grid(cfg: StudyConfig, device: torch.device, log: Callable[[str], None], progress: bool) -> Path:
    out_dir = cfg.out_dir
    g = cfg.grid
    ratios = cfg.data.fg_ratios if cfg.data.source == "toy" else [None]
    # Build (and so check) the Pet data before the folder is touched.
    tasks = [toy_task(cfg, r, device) if r is not None else pet_task(cfg, device) for r in ratios]

    if out_dir.exists():
        shutil.rmtree(out_dir)  # --overwrite, checked above
    out_dir.mkdir(parents=True)
    with atomic_write(out_dir / CONFIG_NAME) as f:
        yaml.safe_dump(study_config_to_dict(cfg), f, sort_keys=False)

    plan = [(t, bn, opt, loss) for t in tasks for bn in g.batch_norm for opt in g.optimizers for loss in g.losses]
    names = tasks[0].class_names
    run_cols, step_cols = runs_columns(g.losses, names), steps_columns(g.losses)
    runs: list[dict[str, Any]] = []
    all_steps: list[dict[str, Any]] = []
    steps_by_run: dict[int, list[dict[str, Any]]] = {}
    log(f"study {out_dir}: {len(plan)} runs x {cfg.optim.steps} steps on {device} "
        f"({cfg.data.source}, {cfg.model.arch}, {cfg.data.image_size}px, batch {cfg.data.batch_size})")
    start = time.perf_counter()
    bar = tqdm(plan, desc="study", unit="run", disable=not progress, dynamic_ncols=True)
    for run_id, (task, bn, opt, loss) in enumerate(bar):
        t0 = time.perf_counter()
        # Same seed for every run: identical initial weights for a given architecture and BN setting.
        torch.manual_seed(cfg.study.seed)
        model = build_study_model(cfg.model, task.in_channels, len(task.class_names), bn).to(device)
        optimizer, lr = build_optimizer(opt, cfg.optim, model.parameters())
        losses = build_losses(g.losses, task, device)
        steps, finite = train_run(model, optimizer, task, loss, losses, cfg.optim.steps)
        result = evaluate_run(model, task, losses) if finite else None
        run = dict(run_id=run_id, source=cfg.data.source, fg_ratio=task.fg_ratio, loss=loss, batch_norm=bn,
                   optimizer=opt, lr=lr, steps=cfg.optim.steps)
        row = summary_row(run, task, steps, finite, result, cfg.study.converged_min_iou)
        row["seconds"] = time.perf_counter() - t0
        runs.append(row)
        for s in steps:
            s["run_id"] = run_id
        steps_by_run[run_id] = steps
        all_steps.extend(steps)
        write_csv(out_dir / "runs.csv", run_cols, runs)
        write_csv(out_dir / "steps.csv", step_cols, all_steps)
        bar.set_postfix_str(f"{task.label} {loss} {_combo_label(bn, opt)}: {row['outcome']}, "
                            f"{task.focus} IoU {row.get('fg_iou', math.nan):.2f}, min IoU {row.get('min_iou', math.nan):.2f}")
    bar.close()

    rows = [(t.fg_ratio, t.label) for t in tasks]
    focus = tasks[0].focus
    plot_step_grid(runs, steps_by_run, rows, g.losses, "trained",
                   "training loss (the loss each run optimises, on its training batch)", out_dir / "loss_curves.png")
    plot_step_grid(runs, steps_by_run, rows, g.losses, "grad_norm",
                   "global gradient norm (all parameters, before each update)", out_dir / "grad_norm_curves.png", log_y=True)
    plot_iou_heatmap(runs, rows, g.losses, g.batch_norm, g.optimizers, focus, cfg.study.converged_min_iou,
                     out_dir / "final_iou_heatmap.png")
    converged = sum(r["converged"] for r in runs)
    log(f"{converged}/{len(runs)} runs converged (every class IoU >= {cfg.study.converged_min_iou:g}); "
        f"{time.perf_counter() - start:.0f}s; results in {out_dir}")
    return out_dir

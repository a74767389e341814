"""The config schema: every key's type, default, allowed values, range and help text, declared once.

Loading (seg_pet.config.loading) checks values against these declarations, and the config
reference in docs/configuration.md is generated from them (seg_pet.config.reference), so the
two cannot drift apart. Losses have options of their own: `LOSSES` maps each loss name to its
help and the dataclass of the options it accepts; in YAML they sit flat beside `loss.name`.

The allowed names of a choice are declared here, not beside their builders: loading and the
generated reference need them, and this layer sits below the ones that build. Each builder table
is declared with `builders_for`, which refuses at import a table whose names differ from these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, TypeVar, Union

from seg_pet.labels import BORDER_MODES


def option(
    default: Any,
    help: str,
    *,
    choices: tuple = (),
    ge: Optional[float] = None,
    gt: Optional[float] = None,
    lt: Optional[float] = None,
    le: Optional[float] = None,
) -> Any:
    """A config key: its default and what the loader checks. Every number must also be finite."""
    metadata = {"help": help, "choices": choices, "ge": ge, "gt": gt, "lt": lt, "le": le, "default": default}
    if isinstance(default, list):  # a fresh list per config
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


ARCHITECTURES = (
    "unet",
    "unetplusplus",
    "fpn",
    "deeplabv3",
    "deeplabv3plus",
    "linknet",
    "pspnet",
    "manet",
    "pan",
    "upernet",
    "segformer",
    "dpt",
)
CLASS_WEIGHT_SCHEMES = ("inverse", "median", "sqrt_inverse")
DICE_VARIANTS = ("dice", "dice_sq", "dice_fg", "dice_fg_sq")


@dataclass
class RunConfig:
    name: str = option("pet_unet", "run folder name; the run folder is exactly `<run.output_dir>/<run.name>/`")
    output_dir: str = option("outputs", "parent of run folders")
    seed: int = option(0, "seeds python, numpy, torch, the validation split, shuffling and augmentation", ge=0, le=2**32 - 1)


@dataclass
class DataConfig:
    source: str = option(
        "oxford",
        "`oxford`: the dataset at `data.root`; `synthetic`: generated into `data.root` (smoke tests); "
        "`folder`: your own images and masks under `data.root` (docs/your_data.md)",
        choices=("oxford", "synthetic", "folder"),
    )
    root: str = option("data", "the folder that holds `oxford-iiit-pet/`, or (`folder`) `images/` and `masks/`")
    download: bool = option(False, "download the dataset with torchvision when it is missing")
    image_size: int = option(
        256, "training and evaluation size in pixels; a multiple of 32 (the U-Net downsamples 5 times)", ge=32, le=2048
    )
    val_fraction: float = option(
        0.1,
        "share of trainval held out for validation, stratified by breed (`folder`: a seeded share of the training "
        "images when there is no validation split on disk); `0`: train on all of trainval with no "
        "validation (needs `train.select: last`; docs/recipe.md)",
        ge=0.0,
        lt=1.0,
    )
    test_fraction: float = option(
        0.1, "`folder` with one pool of images (no split folders or lists): the seeded share held out as the test split", gt=0.0, lt=1.0
    )
    classes: list[str] = option([], "`folder`: the class names, in class-id order (mask value or colour i = class i)")
    mask_format: str = option(
        "index", "`folder`: `index` (single-channel, value = class id) or `color` (RGB, one colour per class)", choices=("index", "color")
    )
    class_colors: Optional[list[list[int]]] = option(
        None, "`folder`: one [r, g, b] per class: the mask colours with `mask_format: color`, else the display palette", ge=0, le=255
    )
    ignore_values: list[int] = option(
        [255], "`folder`, index masks: mask values that are no class (left out of loss and metrics), e.g. 255 or CamVid's 11", ge=0, le=255
    )
    ignore_colors: list[list[int]] = option([], "`folder`, colour masks: [r, g, b] colours that are no class (ignored)", ge=0, le=255)
    background: Optional[str] = option(None, "`folder`: the class the foreground-only Dice losses (`dice_fg*`) leave out")
    border: str = option(
        "class",
        "the trimap's border ring: `class` (3 classes), `ignore` (left out of loss and metrics), `pet` (merged into pet)",
        choices=BORDER_MODES,
    )
    batch_size: int = option(
        16,
        "images per training step in each process; under torchrun the global batch is this times the "
        "number of processes (docs/distributed.md)",
        ge=1,
        le=4096,
    )
    num_workers: Union[int, str] = option("auto", "DataLoader workers; `auto` = usable CPUs - 1, at most 16")
    synthetic_images: int = option(60, "images generated for `data.source: synthetic`", ge=8, le=10_000)
    cache: str = option(
        "none",
        "decoded-image cache: `none`, `memory`, `disk`, or `device` (kept on the training device, batches augmented there)",
        choices=("none", "memory", "disk", "device"),
    )
    augment: bool = option(
        True,
        "random crop, flip and colour jitter of training images; `false`: they are resized like "
        "validation images (ablations, and exact 1-process vs N-process comparisons)",
    )
    crop_scale: list[float] = option(
        [0.35, 1.0], "training crops: [min, max] share of the image's area each random crop covers", gt=0.0, le=1.0
    )
    rotation: float = option(
        0.0,
        "training images are rotated by a random angle up to this many degrees either way (corners left out of the loss)",
        ge=0.0,
        le=180.0,
    )
    cutmix: float = option(
        0.0,
        "share of training images that get CutMix: a random box of the image and its mask replaced by the same box "
        "of another image in the batch (0 = off)",
        ge=0.0,
        le=1.0,
    )


@dataclass
class ModelConfig:
    arch: str = option("unet", "segmentation_models_pytorch architecture", choices=ARCHITECTURES)
    encoder: str = option("resnet34", "any segmentation_models_pytorch encoder name")
    encoder_weights: Optional[str] = option("imagenet", "`imagenet`, `null` (random init) or a path to a local weights file")
    encoder_depth: int = option(
        5,
        "encoder stages the decoder uses (3-5); fewer is faster and sees less context (a U-Net keeps its shallowest decoder widths)",
        ge=3,
        le=5,
    )
    decoder_channels: Optional[list[int]] = option(
        None,
        "U-Net family: one decoder width per encoder stage, deepest first (`null`: smp's 256-128-64-32-16, "
        "the shallowest `encoder_depth` of them); narrower is faster",
        ge=1,
        le=4096,
    )


# --------------------------------------------------------------------------- loss options, one dataclass per loss

_SMOOTHING = "CE label smoothing"
_WEIGHTS = "class weights: a scheme (`inverse`, `median`, `sqrt_inverse`, from training-split pixel counts) or one number per class"
_CLASSES = "class names whose Dice terms are averaged (default: all)"
# Upper bounds where a larger value can only be a typo and would overflow float32 in the loss (NaN, exit 1).
_MAX_WEIGHT = 1e6
_MAX_WEIGHT_TERM = 1000.0


@dataclass
class NoOptions:
    pass


@dataclass
class CEOptions:
    label_smoothing: float = option(0.0, _SMOOTHING, ge=0.0, lt=1.0)
    class_weights: Union[str, list[float], None] = option(None, _WEIGHTS, ge=0.0, le=_MAX_WEIGHT)


@dataclass
class WCEOptions:
    label_smoothing: float = option(0.0, _SMOOTHING, ge=0.0, lt=1.0)
    class_weights: Union[str, list[float]] = option("inverse", _WEIGHTS, ge=0.0, le=_MAX_WEIGHT)


@dataclass
class ClassesOptions:
    classes: Optional[list[str]] = option(None, _CLASSES)


@dataclass
class CEDiceOptions:
    label_smoothing: float = option(0.0, _SMOOTHING, ge=0.0, lt=1.0)
    class_weights: Union[str, list[float], None] = option(None, _WEIGHTS, ge=0.0, le=_MAX_WEIGHT)
    dice_weight: float = option(1.0, "weight of the Dice term: loss = CE + dice_weight * Dice", ge=0.0, le=_MAX_WEIGHT_TERM)
    dice_variant: str = option("dice", "which Dice is added to CE", choices=DICE_VARIANTS)


@dataclass
class FocalOptions:
    gamma: float = option(2.0, "focusing parameter", ge=0.0, le=_MAX_WEIGHT_TERM)
    class_weights: Union[str, list[float], None] = option(None, _WEIGHTS, ge=0.0, le=_MAX_WEIGHT)


@dataclass
class TverskyOptions:
    alpha: float = option(0.5, "weight of false positives", ge=0.0, le=_MAX_WEIGHT_TERM)
    beta: float = option(0.5, "weight of false negatives", ge=0.0, le=_MAX_WEIGHT_TERM)
    classes: Optional[list[str]] = option(None, _CLASSES)


class LossSpec(NamedTuple):
    options: type  # the dataclass of the options this loss accepts
    help: str


# loss.name -> its options and help; the builders are seg_pet.losses.BUILDERS, declared with builders_for(LOSSES, ...)
LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(CEOptions, "cross-entropy"),
    "wce": LossSpec(WCEOptions, "class-weighted cross-entropy (inverse-frequency weights by default)"),
    "dice": LossSpec(ClassesOptions, "soft Dice, mean over classes (smp DiceLoss)"),
    "dice_sq": LossSpec(ClassesOptions, "soft Dice with squared denominator (V-Net)"),
    "dice_fg": LossSpec(NoOptions, "soft Dice over the foreground classes only"),
    "dice_fg_sq": LossSpec(NoOptions, "squared-denominator Dice over the foreground classes only"),
    "ce_dice": LossSpec(CEDiceOptions, "cross-entropy + dice_weight * Dice"),
    "focal": LossSpec(FocalOptions, "focal loss (smp, one-vs-rest sigmoid form)"),
    "lovasz": LossSpec(NoOptions, "Lovasz-softmax (smp)"),
    "tversky": LossSpec(TverskyOptions, "Tversky loss (smp)"),
    "jaccard": LossSpec(ClassesOptions, "soft Jaccard / IoU loss (smp)"),
}


@dataclass
class LossConfig:
    """`name` picks the loss; its options (LOSSES[name].options) sit flat beside it in YAML."""

    name: str = option("ce", "the loss; its options are listed per loss below", choices=tuple(LOSSES))
    options: Any = field(default_factory=CEOptions)

    def get(self, key: str, default: Any = None) -> Any:
        """An option of the chosen loss, or `default` when that loss has no such option."""
        return getattr(self.options, key, default)


@dataclass
class OptimConfig:
    name: str = option("adamw", "optimiser", choices=("adamw", "adam", "sgd"))
    lr: float = option(1e-3, "peak learning rate", gt=0.0, le=10.0)
    weight_decay: float = option(1e-4, "weight decay", ge=0.0, le=1.0)
    momentum: float = option(0.9, "SGD momentum (sgd only)", ge=0.0, lt=1.0)
    scheduler: str = option(
        "cosine", "per-iteration schedule: `cosine` to 0, `poly` (power 0.9), or `none`", choices=("cosine", "poly", "none")
    )
    epochs: int = option(30, "training epochs", ge=1, le=100_000)
    warmup_epochs: float = option(
        0.0,
        "the learning rate rises linearly from 0 over this many epochs, then follows optim.scheduler over the rest",
        ge=0.0,
        le=100_000.0,
    )
    grad_clip: Optional[float] = option(None, "clip the global gradient norm to this value; null = no clipping", gt=0.0)


@dataclass
class TrainConfig:
    device: str = option("auto", "`auto`, `cpu`, `cuda` or `cuda:N`")
    amp: bool = option(True, "bf16 autocast on CUDA where supported (fp16 + loss scaling otherwise); ignored on CPU")
    overlays: int = option(4, "validation images drawn every epoch", ge=0, le=1000)
    deterministic: bool = option(False, "`torch.use_deterministic_algorithms` (slower on GPU)")
    compile: bool = option(False, "`torch.compile` the model")
    channels_last: Optional[bool] = option(
        None,
        "channels_last (NHWC) layout for the model and its batches; null = on CUDA only. On CPU it is faster for "
        "some models and slower for others: measure before turning it on (docs/performance.md)",
    )
    ema: Optional[float] = option(
        None,
        "decay of an exponential moving average of the weights, updated every step (e.g. 0.99); validation, "
        "checkpoints and the test use the averaged weights; null = off",
        gt=0.0,
        lt=1.0,
    )
    select: str = option(
        "best_val",
        "which epoch becomes best.pt, the checkpoint the test scores: `best_val` (highest validation mIoU) or `last` "
        "(a fixed schedule: the final epoch)",
        choices=("best_val", "last"),
    )
    max_steps_per_epoch: Optional[int] = option(None, "cap on training steps per epoch (quick experiments, tests)", ge=1)
    early_stop: Optional[int] = option(
        None,
        "stop after this many epochs in a row without a validation mIoU gain above train.early_stop_min_delta, then test "
        "best.pt; cuts the learning-rate schedule short (it stays sized for optim.epochs); 0 or null = off",
        ge=0,
    )
    early_stop_min_delta: float = option(0.0, "the validation mIoU gain that counts as an improvement for train.early_stop", ge=0.0)
    tensorboard: bool = option(
        False, 'log every epoch to <run>/tensorboard (rank 0 only); needs the extra: pip install -e ".[tensorboard]"'
    )
    sync_bn: bool = option(
        False,
        "under torchrun: batch-norm statistics over the global batch (SyncBatchNorm) instead of each process's own; ignored in one process",
    )
    dist_timeout: float = option(
        600.0, "under torchrun: seconds a collective waits for the other processes before the job stops with an error", ge=10.0, le=86_400.0
    )


@dataclass
class EvalConfig:
    native_resolution: bool = option(False, "score each image at its original size (logits resized back before the argmax)")
    tta: str = option(
        "none",
        "test-time augmentation for `evaluate` and the end-of-training test (per-epoch validation never uses it): `none`, "
        "`hflip` (mean logits of image and mirror), `hflip+scales` (hflip at 0.75, 1 and 1.25 x image_size); "
        "see docs/use_your_model.md",
        choices=("none", "hflip", "hflip+scales"),
    )
    boundary_width: float = option(
        0.02,
        "boundary IoU's band: pixels within this share of the image diagonal of a contour (at least 1 pixel; "
        "0.02 as in Cheng et al. 2021); see docs/losses_and_metrics.md",
        gt=0.0,
        le=0.5,
    )
    worst: int = option(
        8, "the lowest-mIoU images drawn as panels into worst/ by the end-of-training test and `evaluate --details`", ge=0, le=1000
    )


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


SECTION_HELP = {
    "run": "where the run folder goes, and the seed",
    "data": "the dataset, splits, image size, batches and caches",
    "model": "the network",
    "loss": "the training loss and its options",
    "optim": "optimiser and learning-rate schedule",
    "train": "device and training-loop settings",
    "eval": "how validation and test are scored",
}


def allowed(section: type, key: str) -> tuple:
    """The allowed values of a key: `allowed(OptimConfig, "name")`."""
    return next(f for f in dataclasses.fields(section) if f.name == key).metadata["choices"]


Builder = TypeVar("Builder")


def builders_for(names: Iterable[str], builders: dict[str, Builder]) -> dict[str, Builder]:
    """A name -> builder table for the names the schema allows (`names`); refused unless the two match."""
    names = tuple(names)
    if set(builders) != set(names):
        raise TypeError(f"builders for {sorted(builders)} do not match the names the config schema allows: {sorted(names)}")
    return builders

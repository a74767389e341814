"""The GPU path, checked on a GPU: `python -m pytest -m cuda tests/cuda` (scripts/gpu_check.py runs it and records the summary).

Every test is marked `cuda` and is skipped, with the reason, where torch sees no CUDA device, so
this file collects and skips cleanly on CPU-only machines and in CI. Tolerances, stated once here:

  ATOL_AUGMENT   BatchAugment on CUDA against the same call on CPU (same seed): labels identical,
                 normalised images within 1e-3 (about 0.06 of one grey level). Every random draw is
                 made on the CPU either way; what differs is float arithmetic (antialiased resize,
                 per-image reductions in the jitter) done by other kernels.
  ATOL_BATCHES   device-resident validation batches against the DataLoader's: 1e-6, labels identical
                 (the same uint8 -> float -> normalise steps, on another device).
  evaluation     the same checkpoint evaluated on CUDA and on CPU: in fp32 (cuDNN may use TF32)
                 at most 0.5 % of pixels predicted differently and mIoU within 0.005; with bf16
                 autocast at most 5 % and 0.02 (bf16 keeps 8 bits of mantissa: on CPU, bf16 autocast
                 against fp32 changed 1.4 % of this test's pixels and mIoU by 0.002). The pixel counts
                 are identical.
  resume         weights and optimiser state bit for bit; per-epoch metrics to 1e-6 (CUDA's
                 cross-entropy forward sums its blocks with atomics, so a logged loss may differ in
                 its last bits even with deterministic algorithms; the gradients do not).
"""

from __future__ import annotations

import os

# Deterministic cuBLAS for the exact-resume test; it must be set before the first cuBLAS call of the process.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from seg_pet.checkpoint import load_checkpoint  # noqa: E402
from seg_pet.config import LossConfig, ModelConfig, load_config  # noqa: E402
from seg_pet.config.schema import DataConfig  # noqa: E402
from seg_pet.data.cache import DeviceBatches, DeviceCache, attach_cache  # noqa: E402
from seg_pet.data.loaders import epoch_train_loader, make_loader, move_caches_to_device  # noqa: E402
from seg_pet.data.sources import build_datasets  # noqa: E402
from seg_pet.data.synthetic import make_synthetic_dataset  # noqa: E402
from seg_pet.data.transforms import BatchAugment  # noqa: E402
from seg_pet.evaluation import evaluate_run, load_run  # noqa: E402
from seg_pet.labels import class_names  # noqa: E402
from seg_pet.losses import build_loss  # noqa: E402
from seg_pet.models import build_model  # noqa: E402
from seg_pet.runtime.device import Runtime  # noqa: E402
from seg_pet.training.loop import train_one_epoch  # noqa: E402
from tests.conftest import set_args, tiny_overrides  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason=f"needs a CUDA GPU: torch.cuda.is_available() is False here (torch {torch.__version__})"
    ),
]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
SIZE = 64
CROP_SCALE = tuple(DataConfig().crop_scale)
NAMES = class_names("class")
ATOL_AUGMENT = 1e-3
ATOL_BATCHES = 1e-6
EVAL_TOLERANCE = {  # amp -> (share of pixels predicted differently, |mIoU difference|)
    False: (0.005, 0.005),
    True: (0.05, 0.02),
}


@pytest.fixture(autouse=True)
def _restore_backend_flags():
    """train() sets process-wide flags (deterministic algorithms, cudnn.benchmark): give the next test the defaults back."""
    deterministic, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark


def _silent(_: str) -> None:
    pass


def _originals(count: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """uint8 images and labels 0..2 of differing sizes, like the training cache's decoded originals (on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i in range(count):
        h, w = 80 + 7 * (i % 5), 96 + 5 * (i % 7)
        images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        labels.append(torch.randint(0, 3, (h, w), dtype=torch.uint8, generator=g))
    return images, labels


def _config(root: Path, **extra: str):
    sets = {"data.root": str(root), "data.source": "oxford", "data.image_size": SIZE, "data.num_workers": 0, **extra}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cuda_data")
    make_synthetic_dataset(root, num_images=24, seed=0)  # the arguments data.source: synthetic uses: train runs reuse it
    return root


def _train_argv(tmp_path: Path, out: Path, name: str, data_root: Path, **extra) -> list[str]:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    sets = {
        "data.synthetic_images": 24,
        "data.image_size": SIZE,
        "data.batch_size": 4,
        "train.device": "cuda",
        "train.overlays": 1,
        "train.max_steps_per_epoch": 2,
        **extra,
    }
    return ["train", "--config", str(config), *set_args(tiny_overrides(out, name, real=False, data_root=data_root, **sets))]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_close(a, b, path: str = "rows") -> None:
    """Equal structure; numbers equal to 1e-6 (None == None: NaN is written as null)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6, rel=0), path
    else:
        assert a == b, path


# --------------------------------------------------------------------------- data on the device


def test_batch_augment_on_cuda_equals_cpu():
    images, labels = _originals(12)
    torch.manual_seed(3)
    cpu_images, cpu_labels = BatchAugment(SIZE, CROP_SCALE)(images, labels)
    torch.manual_seed(3)
    gpu_images, gpu_labels = BatchAugment(SIZE, CROP_SCALE)([i.to(CUDA) for i in images], [label.to(CUDA) for label in labels])
    assert gpu_images.device.type == "cuda" and gpu_labels.device.type == "cuda"
    assert gpu_images.shape == cpu_images.shape == (12, 3, SIZE, SIZE)
    assert torch.equal(gpu_labels.cpu(), cpu_labels)
    torch.testing.assert_close(gpu_images.cpu(), cpu_images, atol=ATOL_AUGMENT, rtol=0)


def test_device_cache_validation_batches_equal_the_dataloader_batches_on_cuda(data_root):
    val = build_datasets(_config(data_root))["val"]
    attach_cache(val, "device", data_root=data_root, log=_silent)
    expected = list(make_loader(val, 2, shuffle=False, num_workers=0))
    batches = list(DeviceBatches(DeviceCache(val, CUDA), 2, shuffle=False))
    assert len(batches) == len(expected) > 0
    for (images, labels), (ref_images, ref_labels) in zip(batches, expected):
        assert images.device.type == "cuda" and labels.device.type == "cuda"
        torch.testing.assert_close(images.cpu(), ref_images, atol=ATOL_BATCHES, rtol=0)
        assert labels.dtype == torch.int64 and torch.equal(labels.cpu(), ref_labels)


def test_device_cache_training_batches_on_cuda_equal_those_on_cpu(data_root):
    """data.cache: device as train builds it (epoch_train_loader): the same seeded order and draws on either device."""
    cfg = _config(data_root, **{"data.cache": "device"})
    epochs = {}
    for device in (CPU, CUDA):
        datasets = build_datasets(cfg)
        for split in ("train", "val"):
            attach_cache(datasets[split], "device", data_root=data_root, log=_silent)
        on_device = move_caches_to_device(datasets, device, _silent)
        runtime = Runtime(device)
        epochs[device.type] = [(x.cpu(), y.cpu()) for x, y in epoch_train_loader(cfg, datasets["train"], on_device, 4, 0, 2, runtime)]
    assert len(epochs["cuda"]) == len(epochs["cpu"]) > 0
    for (images, labels), (ref_images, ref_labels) in zip(epochs["cuda"], epochs["cpu"]):
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(images, ref_images, atol=ATOL_AUGMENT, rtol=0)


def test_device_cache_out_of_memory_is_one_line_and_leaves_no_run(tmp_path, data_root, monkeypatch, capsys):
    """A real CUDA out-of-memory error from the device cache (an allocation of twice the GPU's memory)."""
    import seg_pet.data.loaders as loaders
    from seg_pet.cli import main

    def too_big(dataset, device):
        return torch.empty(2 * torch.cuda.get_device_properties(device).total_memory, dtype=torch.uint8, device=device)

    monkeypatch.setattr(loaders, "DeviceCache", too_big)
    out = tmp_path / "out"
    code = main(_train_argv(tmp_path, out, "oom", data_root, **{"data.cache": "device"}))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "data.cache: device" in err and "data.cache: memory" in err and "cuda" in err
    assert not (out / "oom").exists()


# --------------------------------------------------------------------------- the step on the device


def test_bf16_autocast_training_steps_are_finite_and_the_loss_falls():
    runtime = Runtime.create("cuda")
    if runtime.amp_dtype != torch.bfloat16:
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16: train uses fp16 with a GradScaler there")
    torch.manual_seed(0)
    model = runtime.place(build_model(ModelConfig(encoder="resnet18", encoder_weights=None), len(NAMES)))
    loss_fn = build_loss(LossConfig(), NAMES).to(CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(8, 3, SIZE, SIZE)
    targets = (images[:, 0] > 0).long() + (images[:, 1] > 1).long()  # learnable from the pixels: classes 0..2
    with torch.no_grad(), runtime.autocast():
        assert model(runtime.to_device(images)).dtype == torch.bfloat16  # autocast is really on
    losses = []
    for step in range(12):
        stats = train_one_epoch(
            model, [(images, targets)], loss_fn, optimizer, None, runtime, scaler=runtime.grad_scaler(), desc=f"step {step}"
        )
        assert stats["steps"] == 1 and math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm_max"]), stats
        losses.append(stats["loss"])
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_channels_last_is_kept_from_input_to_output():
    runtime = Runtime.create("cuda")
    assert runtime.channels_last and runtime.pin_memory
    model = runtime.place(build_model(ModelConfig(encoder="resnet34", encoder_weights=None), len(NAMES))).eval()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    images = runtime.to_device(torch.randn(2, 3, SIZE, SIZE))
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    broken = []

    def check(name):
        def hook(module, inputs, output):
            for what, tensor in (("input", inputs[0]), ("output", output)):
                if not tensor.is_contiguous(memory_format=torch.channels_last):
                    broken.append(f"{name} {what}")

        return hook

    handles = [m.register_forward_hook(check(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad(), runtime.autocast():
            logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    assert broken == [], f"layout conversions inside the model: {broken[:5]}"
    assert logits.shape == (2, len(NAMES), SIZE, SIZE) and logits.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- train and evaluate on CUDA


def test_compiled_model_trains_one_epoch(tmp_path, data_root, capsys):
    from seg_pet.cli import main

    out = tmp_path / "out"
    assert main(_train_argv(tmp_path, out, "compiled", data_root, **{"train.compile": "true", "optim.epochs": 1})) == 0, (
        capsys.readouterr().err
    )
    rows = _rows(out / "compiled")
    assert [r["epoch"] for r in rows] == [1] and math.isfinite(rows[0]["train_loss"]) and math.isfinite(rows[0]["val_loss"])
    assert (out / "compiled" / "test_metrics.json").is_file()
    assert "cuda" in capsys.readouterr().out


@pytest.mark.parametrize("cache", ["none", "device"])
def test_deterministic_resume_on_cuda_reproduces_an_uninterrupted_run(tmp_path, data_root, capsys, cache):
    """train.deterministic: true: 4 epochs straight equal 2 + --resume + 2: weights bit for bit, metrics to 1e-6."""
    from seg_pet.cli import main

    out = tmp_path / "out"
    extra = {"train.deterministic": "true", "optim.epochs": 4, "data.cache": cache}
    assert main(_train_argv(tmp_path, out, "straight", data_root, **extra)) == 0
    assert main(_train_argv(tmp_path, out, "split", data_root, **extra) + ["--stop-after-epoch", "2"]) == 0
    assert [r["epoch"] for r in _rows(out / "split")] == [1, 2]
    assert main(["train", "--resume", str(out / "split")]) == 0
    assert "resuming" in capsys.readouterr().out

    a, b = _rows(out / "straight"), _rows(out / "split")
    for row in a + b:
        row.pop("seconds")
    _assert_close(a, b)
    state_a = load_checkpoint(out / "straight" / "checkpoints" / "last.pt")
    state_b = load_checkpoint(out / "split" / "checkpoints" / "last.pt")
    for key in state_a["model"]:
        assert torch.equal(state_a["model"][key], state_b["model"][key]), key
    for pid, s in state_a["optimizer"]["state"].items():
        for key, value in s.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b["optimizer"]["state"][pid][key])), key


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, data_root) -> Path:
    """A short run trained on the CPU: its best.pt is what both devices evaluate."""
    from seg_pet.cli import main

    tmp = tmp_path_factory.mktemp("cpu_run")
    argv = _train_argv(tmp, tmp / "out", "cpu", data_root, **{"train.device": "cpu", "optim.epochs": 2, "train.max_steps_per_epoch": 3})
    assert main(argv) == 0
    return tmp / "out" / "cpu"


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_evaluate_on_cuda_equals_evaluate_on_cpu(cpu_run, amp):
    pixel_tolerance, miou_tolerance = EVAL_TOLERANCE[amp]
    quiet = {"log": _silent}
    on_cpu = evaluate_run(cpu_run, split="val", overrides=["train.device=cpu"], **quiet)
    on_cuda = evaluate_run(cpu_run, split="val", overrides=["train.device=cuda", f"train.amp={str(amp).lower()}"], **quiet)
    assert on_cuda["num_images"] == on_cpu["num_images"]
    a, b = torch.tensor(on_cpu["confusion"]), torch.tensor(on_cuda["confusion"])
    assert a.sum() == b.sum() and (a.sum(1) == b.sum(1)).all()  # the same pixels, the same ground truth
    assert abs(on_cuda["miou"] - on_cpu["miou"]) <= miou_tolerance, (on_cpu["miou"], on_cuda["miou"])

    # Pixel by pixel: the same checkpoint's predictions on both devices.
    cfg, model, names, _, _ = load_run(cpu_run, "best")
    val = build_datasets(cfg)["val"]
    cuda_runtime = Runtime.create("cuda", amp=amp)
    cuda_model = cuda_runtime.place(load_run(cpu_run, "best").model)
    differing = total = 0
    with torch.inference_mode():
        for images, targets in make_loader(val, 4, shuffle=False, num_workers=0):
            cpu_pred = model(images).argmax(1)
            with cuda_runtime.autocast():
                cuda_pred = cuda_model(cuda_runtime.to_device(images)).float().argmax(1).cpu()
            differing += int((cpu_pred != cuda_pred).sum())
            total += targets.numel()
    assert differing <= pixel_tolerance * total, f"{differing} of {total} pixels differ"

"""train.channels_last: the layout choice reaches the model, its batches and the run's first line, and changes
no prediction beyond float rounding."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from seg_pet.config import load_config
from seg_pet.runtime.device import Runtime
from seg_pet.training.train import train
from tests.conftest import REPO, tiny_overrides


def test_cpu_keeps_the_default_layout_unless_asked():
    assert not Runtime.create("cpu").channels_last
    runtime = Runtime.create("cpu", channels_last=True)
    assert runtime.channels_last and "channels_last" in runtime.describe()
    model = runtime.place(smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=(32, 16, 8)))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    assert runtime.to_device(torch.zeros(2, 3, 32, 32)).is_contiguous(memory_format=torch.channels_last)


def test_the_layout_changes_no_prediction_beyond_rounding():
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=4, decoder_channels=(64, 32, 16, 8)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        plain = model(images)
        nhwc = Runtime.create("cpu", channels_last=True)
        fast = nhwc.place(model)(nhwc.to_device(images))
    assert torch.allclose(plain, fast, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("setting, expected", [("null", False), ("true", True)])
def test_train_uses_the_configured_layout(tmp_path, setting, expected):
    lines: list[str] = []
    sets = tiny_overrides(tmp_path, real=False, **{"train.channels_last": setting, "train.overlays": 0, "optim.epochs": 1})
    cfg = load_config(REPO / "configs" / "smoke.yaml", sets)
    train(cfg, test=False, log=lines.append)
    first = next(line for line in lines if line.startswith("run "))
    assert ("channels_last" in first) is expected

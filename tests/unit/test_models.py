"""Model factory: logits out, local encoder weights, clear errors offline."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision

from seg_pet.config import ModelConfig
from seg_pet.models import build_model
from seg_pet.runtime.errors import CheckpointError, ConfigError, SegPetError


def test_outputs_are_logits_of_the_right_shape():
    model = build_model(ModelConfig(encoder="resnet18", encoder_weights=None), num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    # logits, not probabilities: no softmax at the end of the model
    assert not torch.allclose(out.sum(1), torch.ones(2, 64, 64), atol=1e-3)


def test_local_torchvision_weights_file_loads_into_the_encoder(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(reference.conv1.weight)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # includes fc.* keys, as torchvision's files do
    model = build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), num_classes=3)
    assert torch.equal(model.encoder.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.encoder.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_weights_for_another_encoder_are_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit encoder"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), num_classes=3)


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(SegPetError, match="model.encoder_weights .*nope.pth: no such file"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(tmp_path / "nope.pth")), num_classes=3)


def test_failed_download_suggests_null_or_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(ConfigError, match="could not download 'imagenet'.*encoder_weights: null.*local weights file"):
        build_model(ModelConfig(encoder="resnet34", encoder_weights="imagenet"), num_classes=3)


def test_unknown_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match="model"):
        build_model(ModelConfig(encoder="resnet9000", encoder_weights=None), num_classes=3)


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "manet", "linknet", "deeplabv3", "deeplabv3plus", "upernet"])
@pytest.mark.parametrize("depth", [3, 4])
def test_a_shallower_encoder_keeps_the_output_size_and_uses_fewer_stages(arch, depth):
    cfg = ModelConfig(arch=arch, encoder="resnet18", encoder_weights=None, encoder_depth=depth)
    model = build_model(cfg, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, 3, 48, 48)
    assert model.encoder._depth == depth


def test_a_shallower_unet_keeps_its_shallowest_decoder_widths():
    model = build_model(ModelConfig(encoder="resnet18", encoder_weights=None, encoder_depth=4), num_classes=3)
    widths = [block.conv2[0].out_channels for block in model.decoder.blocks]
    assert widths == [128, 64, 32, 16]


@pytest.mark.parametrize("arch", ["fpn", "pspnet", "pan"])
def test_a_shallower_encoder_is_refused_where_smp_would_change_the_output_size(arch):
    with pytest.raises(ConfigError, match=rf"model\.encoder_depth: 4 works with unet.*use 5 with {arch}"):
        build_model(ModelConfig(arch=arch, encoder="resnet18", encoder_weights=None, encoder_depth=4), num_classes=3)


def test_decoder_channels_set_the_unet_decoder_widths():
    cfg = ModelConfig(encoder="resnet18", encoder_weights=None, encoder_depth=4, decoder_channels=[64, 32, 16, 8])
    model = build_model(cfg, num_classes=3).eval()
    assert [block.conv2[0].out_channels for block in model.decoder.blocks] == [64, 32, 16, 8]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3, 48, 48)


def test_decoder_channels_need_one_width_per_encoder_stage():
    cfg = ModelConfig(encoder="resnet18", encoder_weights=None, encoder_depth=4, decoder_channels=[64, 32, 16, 8, 4])
    with pytest.raises(ConfigError, match=r"model\.decoder_channels: 5 widths for model\.encoder_depth 4.*\[128, 64, 32, 16\]"):
        build_model(cfg, num_classes=3)


@pytest.mark.parametrize("arch", ["linknet", "fpn", "deeplabv3"])
def test_decoder_channels_are_refused_for_decoders_without_per_stage_widths(arch):
    cfg = ModelConfig(arch=arch, encoder="resnet18", encoder_weights=None, decoder_channels=[64, 32, 16, 8, 4])
    with pytest.raises(ConfigError, match=rf"model\.decoder_channels: {arch} has no per-stage decoder widths"):
        build_model(cfg, num_classes=3)

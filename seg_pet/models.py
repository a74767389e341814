"""Model factory: `segmentation_models_pytorch.create_model` keyed by config names.

Models return logits (N, C, H, W). Softmax belongs to losses and metrics, never to the model.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
import torch
from torch import nn

from seg_pet.config import ModelConfig, suggest
from seg_pet.runtime.errors import CheckpointError, ConfigError
from seg_pet.runtime.paths import check_input

# Architectures whose output keeps the input's size with model.encoder_depth 3 or 4 (checked in tests).
SHALLOW_ARCHS = ("unet", "unetplusplus", "manet", "linknet", "deeplabv3", "deeplabv3plus", "upernet")
WEIGHT_NAMES = ("imagenet",)  # smp also knows others for some encoders; a path means a local file


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    weights = cfg.encoder_weights
    local_file = weights is not None and _looks_like_path(weights)
    check_encoder(cfg.encoder, None if local_file else weights)
    if local_file:
        check_input(weights, "model.encoder_weights", "file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # smp's deprecation notes for timm- encoders: stderr stays clean
            model = smp.create_model(
                cfg.arch,
                encoder_name=cfg.encoder,
                encoder_weights=None if local_file else weights,
                classes=num_classes,
                **_decoder_options(cfg.arch, cfg.encoder_depth, cfg.decoder_channels),
            )
    except (KeyError, ValueError, AssertionError) as exc:  # an encoder the architecture cannot use
        first = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).splitlines()
        raise ConfigError(
            f"model.arch: {cfg.arch} cannot be built with encoder {cfg.encoder} ({first[0] if first else type(exc).__name__})"
        ) from None
    except OSError as exc:
        # smp fetches weights from the Hugging Face hub; offline this is an OSError after retries.
        raise ConfigError(
            f"model.encoder_weights: could not download {weights!r} weights for {cfg.encoder} "
            f"({type(exc).__name__}); offline? set model.encoder_weights: null (random init) "
            "or a path to a local weights file"
        ) from None
    if local_file:
        load_encoder_weights(model, Path(weights))
    return model


def _decoder_options(arch: str, depth: int, widths: list[int] | None) -> dict:
    """`encoder_depth` and, for decoders with one width per stage (U-Net family), the widths: `model.decoder_channels`
    as given, or at a shallower depth the shallowest `depth` of smp's defaults."""
    per_stage = _per_stage_widths(arch)
    if widths is not None:
        if per_stage is None:
            raise ConfigError(f"model.decoder_channels: {arch} has no per-stage decoder widths; set it to null")
        if len(widths) != depth:
            raise ConfigError(
                f"model.decoder_channels: {len(widths)} widths for model.encoder_depth {depth}; give one per stage, "
                f"deepest first, e.g. {list(per_stage[-depth:])}"
            )
    options: dict = {}
    if depth != 5:
        if arch not in SHALLOW_ARCHS:
            raise ConfigError(
                f"model.encoder_depth: {depth} works with {', '.join(SHALLOW_ARCHS)} only "
                f"(smp's {arch} then gives outputs of another size or fails); use 5 with {arch}"
            )
        options["encoder_depth"] = depth
    if widths is not None:
        options["decoder_channels"] = tuple(widths)
    elif depth != 5 and per_stage is not None:
        options["decoder_channels"] = per_stage[-depth:]
    return options


def _per_stage_widths(arch: str) -> tuple[int, ...] | None:
    """smp's default decoder widths when the architecture has one per encoder stage (5 of them), else None."""
    builder = smp.MODEL_ARCHITECTURES_MAPPING.get(arch)
    channels = inspect.signature(builder).parameters.get("decoder_channels") if builder else None
    if channels is not None and isinstance(channels.default, (tuple, list)) and len(channels.default) == 5:
        return tuple(channels.default)
    return None


def check_encoder(encoder: str, weights: str | None) -> None:
    """model.encoder is one smp knows, and model.encoder_weights (a name, not a file) one it has for that encoder."""
    known = smp_encoders.get_encoder_names()
    if encoder.startswith("tu-"):
        names: tuple[str, ...] = WEIGHT_NAMES  # timm universal encoders: the name picks the weights; any value means "pretrained"
    elif encoder in known:
        names = tuple(smp_encoders.encoders[encoder]["pretrained_settings"])
    elif encoder.startswith("timm-"):  # older smp names, mapped onto timm universal encoders
        names = WEIGHT_NAMES
    else:
        raise ConfigError(f"model.encoder: unknown encoder {encoder!r}{suggest(encoder, known)}")
    if weights is not None and weights not in names:
        choices = ", ".join(names) if names else "none (this encoder has no pretrained weights)"
        raise ConfigError(
            f"model.encoder_weights: unknown weights {weights!r} for encoder {encoder}; choose {choices}, "
            "null (random init) or a path to a local weights file"
        )


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or Path(value).suffix in (".pt", ".pth", ".bin", ".safetensors")


def load_encoder_weights(model: nn.Module, path: Path) -> None:
    """Load an encoder state dict from a local file (e.g. torchvision's resnet34-*.pth, smp-hub safetensors).

    Keys of a classification head (fc.*, classifier.*) are dropped, since smp encoders have none;
    every encoder weight must be present, so a file for another encoder is refused.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: one line, naming it
        raise CheckpointError(
            f"model.encoder_weights: cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"model.encoder_weights: {path} does not hold a state dict")
    state = {k.removeprefix("encoder."): v for k, v in state.items() if not k.startswith(("fc.", "classifier.", "head."))}
    encoder = model.encoder  # type: ignore[attr-defined]
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"model.encoder_weights: {path} does not fit encoder {type(encoder).__name__}: {first}") from None

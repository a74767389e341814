"""Any image file or PIL image -> 8-bit RGB (H, W, 3), as training saw its images.

    EXIF orientation  applied first (PIL.ImageOps.exif_transpose): the mask matches the image as
                      viewers show it, and width/height are those of the rotated image
    RGB               used as is
    P (GIF, palette)  the first frame, palette expanded to RGB
    RGBA, LA, PA      alpha dropped (the colour under transparent pixels is kept), as training's
                      reader does for the dataset's RGBA file
    L, 1 (grayscale)  the gray value copied to R, G and B
    CMYK, YCbCr       PIL's convert("RGB") (no colour management; ICC profiles are ignored)
    I;16 (16-bit)     scaled to 8 bits (value / 257, rounded), then gray -> RGB. PIL's own
                      convert("RGB") would clip every value above 255 to white
    I (32-bit int)    as 16-bit when the maximum exceeds 255, else taken as 8-bit
    F (float)         taken as 0..1 when the maximum is <= 1, else as 0..255 (clipped)
    16-bit RGB PNG    PIL already reads it as 8-bit RGB
Multi-frame files (animated GIF, multi-page TIFF) give their first frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from seg_pet.runtime.errors import SegPetError, first_line

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


class ImageReadError(SegPetError):
    """One input image cannot be read (missing, corrupt, truncated, not an image)."""


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB, EXIF orientation applied (see the module docstring)."""
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        return _gray_to_rgb(arr / 257.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else arr)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im).astype(np.float64))
        return _gray_to_rgb(arr * 255.0 if arr.max(initial=0) <= 1.0 else arr)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3); any failure is an ImageReadError naming the file and the reason."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, inside the try
            return to_rgb(im)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (or a format PIL cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: {first_line(exc)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
        raise ImageReadError(f"{path}: cannot decode ({first_line(exc)})") from None


def as_rgb(image: ImageLike) -> np.ndarray:
    """A path, PIL image, uint8 array ((H, W), (H, W, 3) or (H, W, 4)) or uint8 tensor ((3, H, W)) -> RGB (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor of shape (3, H, W), got {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels (0..255), got {arr.dtype}; pass a PIL image or a file path for other depths")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return np.ascontiguousarray(arr[..., :3])
    raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")

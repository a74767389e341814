"""The label contract, owned here and nowhere else: class names, trimap remap, ignore index, palette.

The dataset's trimaps code 1 = pet, 2 = background, 3 = border. Training uses class indices

    0 `pet`, 1 `background`, 2 `border`

with `data.border` choosing what happens to the thin border ring:

    class   3 classes (default)
    ignore  border pixels -> IGNORE_INDEX: excluded from loss and metrics, 2 classes
    pet     border merged into pet: the binary task of the smp Pet example, 2 classes

Imports nothing from seg_pet (and no torch), so every layer may import it.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255  # target value of pixels that count in no loss and no metric

TRIMAP_CODES = {"pet": 1, "background": 2, "border": 3}  # the dataset's own coding
BORDER_MODES = ("class", "ignore", "pet")
BACKGROUND = "background"  # the class the foreground-only Dice losses leave out

_CLASS_NAMES = {
    "class": ("pet", "background", "border"),
    "ignore": ("pet", "background"),
    "pet": ("pet", "background"),
}
_BORDER_TARGET = {"class": 2, "ignore": IGNORE_INDEX, "pet": 0}

# Class colours, in class order; the 2-class modes use the first two.
PALETTE = np.array(
    [
        [255, 140, 26],  # pet: orange
        [52, 64, 100],  # background: dark slate blue
        [170, 230, 40],  # border: yellow-green
    ],
    dtype=np.uint8,
)
IGNORE_COLOUR = np.array([0, 0, 0], dtype=np.uint8)


def class_names(border: str) -> list[str]:
    return list(_CLASS_NAMES[border])


def trimap_lut(border: str) -> np.ndarray:
    """A 256-entry lookup table trimap value -> class index; anything but 1..3 maps to IGNORE_INDEX."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    lut[TRIMAP_CODES["pet"]] = 0
    lut[TRIMAP_CODES["background"]] = 1
    lut[TRIMAP_CODES["border"]] = _BORDER_TARGET[border]
    return lut


def class_to_trimap(border: str) -> np.ndarray:
    """Class index -> the dataset's trimap code (the inverse of trimap_lut for predicted classes)."""
    return np.array([TRIMAP_CODES[name] for name in class_names(border)], dtype=np.uint8)

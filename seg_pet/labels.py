"""The label contract, owned here and nowhere else: `LabelSpec` (class names, palette, ignore index,
how a mask file's values map to class ids, which class is "background"), and the Pet trimap spec.

Training targets are class ids 0..C-1 and IGNORE_INDEX (no loss, no metric). A mask file is coded
in one of three ways (`LabelSpec.coding`):

    trimap  Oxford-IIIT Pet: 1 = pet, 2 = background, 3 = border; `data.border` chooses what the border
            ring becomes: `class` (3 classes), `ignore` (IGNORE_INDEX, 2 classes), `pet` (merged into pet)
    index   single-channel: value = class id; declared ignore values (e.g. 255, CamVid's void 11)
    color   RGB: each class's declared colour; a declared ignore colour

A dataset reads a mask file into `codes` (uint8, HxW): the file values for trimap and index masks, the
class id (or IGNORE_INDEX) for colour masks. `lut()` maps codes to class ids. `fill_code` is a code that
maps to IGNORE_INDEX: what a rotation writes into the corners it uncovers.

Imports nothing from seg_pet (and no torch), so every layer may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

IGNORE_INDEX = 255  # target value of pixels that count in no loss and no metric
MAX_CLASSES = 255  # class ids 0..254; 255 is IGNORE_INDEX
CODINGS = ("trimap", "index", "color")

TRIMAP_CODES = {"pet": 1, "background": 2, "border": 3}  # the Pet dataset's own coding
BORDER_MODES = ("class", "ignore", "pet")
BACKGROUND = "background"  # the Pet class the foreground-only Dice losses leave out

_CLASS_NAMES = {
    "class": ("pet", "background", "border"),
    "ignore": ("pet", "background"),
    "pet": ("pet", "background"),
}
_BORDER_TARGET = {"class": 2, "ignore": IGNORE_INDEX, "pet": 0}

# Default class colours, in class order: the first three are the Pet colours (pet orange, background
# dark slate blue, border yellow-green); then well-separated colours. Black is reserved for ignore.
_COLOURS = [
    (255, 140, 26),
    (52, 64, 100),
    (170, 230, 40),
    (31, 119, 180),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (23, 190, 207),
    (255, 255, 255),
    (44, 160, 44),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (219, 219, 141),
]
IGNORE_COLOUR = np.array([0, 0, 0], dtype=np.uint8)
PALETTE = np.array(_COLOURS[:3], dtype=np.uint8)  # the Pet palette


def default_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: the fixed colours above, then deterministic distinct-enough ones (never black)."""
    colours = list(_COLOURS[:num_classes])
    rng = np.random.default_rng(0)
    while len(colours) < num_classes:
        c = tuple(int(v) for v in rng.integers(40, 256, 3))
        if c not in colours:
            colours.append(c)
    return np.array(colours, dtype=np.uint8).reshape(-1, 3)


Code = Union[int, tuple[int, int, int]]


@dataclass(frozen=True)
class LabelSpec:
    """A run's classes and how its mask files code them.

    `codes`: (file value, class id or IGNORE_INDEX) pairs; a file value is an int (trimap, index) or an
    RGB triple (color). Any value not listed is bad input. `background`: the class the foreground-only
    Dice losses leave out (None: those losses are refused). `border`: the Pet `data.border` mode (trimap only).
    """

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    coding: str
    codes: tuple[tuple[Code, int], ...]
    background: Optional[str] = None
    border: Optional[str] = None

    def __post_init__(self) -> None:
        if self.coding not in CODINGS:
            raise ValueError(f"coding must be one of {CODINGS}, got {self.coding!r}")
        if not 1 <= len(self.names) <= MAX_CLASSES:
            raise ValueError(f"1..{MAX_CLASSES} classes, got {len(self.names)}")
        if len(self.palette) != len(self.names):
            raise ValueError(f"{len(self.names)} classes but {len(self.palette)} palette colours")
        for _, target in self.codes:
            if not (0 <= target < len(self.names) or target == IGNORE_INDEX):
                raise ValueError(f"code target {target} is not a class id or IGNORE_INDEX")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    def palette_array(self) -> np.ndarray:
        return np.array(self.palette, dtype=np.uint8).reshape(-1, 3)

    def allowed_values(self) -> list[Code]:
        """The file values a mask may hold, in a stable order (for messages)."""
        return [value for value, _ in self.codes]

    def describe_values(self) -> str:
        """`0 (sky), 1 (building), ..., 11 (ignore)`: the allowed file values, for one-line errors."""
        parts = []
        for value, target in self.codes:
            shown = list(value) if isinstance(value, tuple) else value
            parts.append(f"{shown} ({'ignore' if target == IGNORE_INDEX else self.names[target]})")
        return ", ".join(parts)

    def lut(self) -> np.ndarray:
        """A 256-entry table code -> class id; codes that are no file value map to IGNORE_INDEX."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        if self.coding == "color":
            lut[: self.num_classes] = np.arange(self.num_classes)
        else:
            for value, target in self.codes:
                lut[value] = target
        return lut

    @property
    def fill_code(self) -> int:
        """A code that lut() maps to IGNORE_INDEX: 0 when it is one (Pet trimaps), else the first such value."""
        lut = self.lut()
        candidates = np.flatnonzero(lut == IGNORE_INDEX)
        if not len(candidates):  # 256 index values all classes: impossible with MAX_CLASSES, kept for safety
            raise ValueError("no mask code maps to the ignore index")
        return 0 if lut[0] == IGNORE_INDEX else int(candidates[0])

    def to_codes(self, arr: np.ndarray) -> tuple[np.ndarray, list[Code]]:
        """A mask file's pixels -> (uint8 codes (H, W), the file values no class or ignore value has)."""
        if self.coding == "color":
            if arr.ndim != 3 or arr.shape[-1] < 3:
                raise ValueError(f"expected an RGB colour mask, got shape {arr.shape}")
            keys = (arr[..., 0].astype(np.int64) << 16) | (arr[..., 1].astype(np.int64) << 8) | arr[..., 2].astype(np.int64)
            table = {(r << 16) | (g << 8) | b: target for (r, g, b), target in self.codes}  # type: ignore[misc]
            uniq, inverse = np.unique(keys, return_inverse=True)
            bad = [(int(k) >> 16, (int(k) >> 8) & 255, int(k) & 255) for k in uniq if int(k) not in table]
            mapped = np.array([table.get(int(k), IGNORE_INDEX) for k in uniq], dtype=np.uint8)
            return mapped[inverse].reshape(keys.shape), bad
        if arr.ndim != 2:
            raise ValueError(f"expected a single-channel mask, got shape {arr.shape}")
        allowed = {value for value, _ in self.codes}
        present = np.unique(arr)
        bad = [int(v) for v in present if int(v) not in allowed]
        return arr.astype(np.uint8), bad

    def class_to_code(self) -> np.ndarray:
        """Class id -> its file value (index and trimap coding): the first value that maps to the class."""
        out = np.zeros(self.num_classes, dtype=np.uint8)
        for c in range(self.num_classes):
            out[c] = next(int(v) for v, t in self.codes if t == c)  # type: ignore[arg-type]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data (checkpoints, model.json)."""
        return {
            "class_names": list(self.names),
            "palette": [list(c) for c in self.palette],
            "coding": self.coding,
            "codes": [[list(v) if isinstance(v, tuple) else v, t] for v, t in self.codes],
            "ignore_index": IGNORE_INDEX,
            "background": self.background,
            "border": self.border,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSpec:
        codes = tuple((tuple(v) if isinstance(v, list) else int(v), int(t)) for v, t in data["codes"])
        return cls(
            names=tuple(data["class_names"]),
            palette=tuple(tuple(int(x) for x in c) for c in data["palette"]),  # type: ignore[misc]
            coding=data["coding"],
            codes=codes,  # type: ignore[arg-type]
            background=data.get("background"),
            border=data.get("border"),
        )


def pet_spec(border: str = "class") -> LabelSpec:
    """Oxford-IIIT Pet trimaps with `data.border` mode `border`."""
    names = _CLASS_NAMES[border]
    codes = ((TRIMAP_CODES["pet"], 0), (TRIMAP_CODES["background"], 1), (TRIMAP_CODES["border"], _BORDER_TARGET[border]))
    palette = tuple(tuple(int(x) for x in c) for c in PALETTE[: len(names)])
    return LabelSpec(names, palette, "trimap", codes, background=BACKGROUND, border=border)  # type: ignore[arg-type]


def declared_spec(
    names: Sequence[str],
    *,
    coding: str = "index",
    colors: Optional[Sequence[Sequence[int]]] = None,
    ignore_values: Sequence[int] = (),
    ignore_colors: Sequence[Sequence[int]] = (),
    background: Optional[str] = None,
) -> LabelSpec:
    """Classes declared by a user: index masks (value = class id, plus `ignore_values`) or colour masks
    (`colors` per class, plus `ignore_colors`). `colors` are also the display palette; without them the
    default palette is used. Raises ValueError with a plain message on an inconsistent declaration."""
    names = tuple(names)
    if len(set(names)) != len(names):
        raise ValueError(f"a class name is given twice: {list(names)}")
    if colors is not None and len(colors) != len(names):
        raise ValueError(f"{len(names)} classes but {len(colors)} colours; give one [r, g, b] per class")
    palette = (
        tuple(tuple(int(x) for x in c) for c in colors) if colors else tuple(tuple(int(x) for x in c) for c in default_palette(len(names)))
    )
    if background is not None and background not in names:
        raise ValueError(f"background class {background!r} is not among the classes {list(names)}")
    if coding == "color":
        if not colors:
            raise ValueError("colour masks need one colour per class")
        if len(set(palette)) != len(palette):
            raise ValueError("two classes have the same colour")
        ignore = [tuple(int(x) for x in c) for c in ignore_colors]
        clash = [c for c in ignore if c in palette]
        if clash:
            raise ValueError(f"ignore colour {list(clash[0])} is also a class colour")
        codes: tuple = tuple((c, i) for i, c in enumerate(palette)) + tuple((c, IGNORE_INDEX) for c in ignore)
    elif coding == "index":
        clash = [v for v in ignore_values if 0 <= v < len(names)]
        if clash:
            raise ValueError(f"ignore value {clash[0]} is also a class id (0..{len(names) - 1})")
        if any(not 0 <= v <= 255 for v in ignore_values):
            raise ValueError("ignore values must be 0..255")
        codes = tuple((i, i) for i in range(len(names))) + tuple((int(v), IGNORE_INDEX) for v in ignore_values)
    else:
        raise ValueError(f"coding must be index or color, got {coding!r}")
    return LabelSpec(names, palette, coding, codes, background=background)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Pet helpers (the Oxford reader and its tests)


def class_names(border: str) -> list[str]:
    return list(pet_spec(border).names)


def trimap_lut(border: str) -> np.ndarray:
    """A 256-entry lookup table trimap value -> class index; anything but 1..3 maps to IGNORE_INDEX."""
    return pet_spec(border).lut()


def class_to_trimap(border: str) -> np.ndarray:
    """Class index -> the dataset's trimap code (the inverse of trimap_lut for predicted classes)."""
    return pet_spec(border).class_to_code()

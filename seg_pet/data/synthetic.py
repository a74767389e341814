"""A tiny synthetic Oxford-IIIT-Pet look-alike for tests and smoke runs without the real data.

Owns `make_synthetic_dataset`: it writes coloured, textured "pets" with trimaps in the exact
on-disk layout of the real dataset, so `torchvision.datasets.OxfordIIITPet` reads it unchanged.
The output is deterministic per argument set (byte-identical files), is built in a temporary
sibling folder and renamed into place, and never touches a folder it did not create itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from seg_pet.config import DataConfig
from seg_pet.data.oxford import open_split
from seg_pet.data.segmentation import SplitFiles
from seg_pet.labels import TRIMAP_CODES
from seg_pet.runtime.errors import DataError
from seg_pet.runtime.fileio import write_json

DATASET_DIRNAME = "oxford-iiit-pet"
MARKER_NAME = ".synthetic.json"
# Bump when the generated content changes, so old synthetic folders are regenerated.
FORMAT_VERSION = 1
JPEG_QUALITY = 95

# Trimap values, as in the real annotations/README (owned by seg_pet.labels): 1 foreground, 2 background, 3 not classified.
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = TRIMAP_CODES.values()


@dataclass(frozen=True)
class _Breed:
    name: str  # capitalised = cat, lowercase = dog, the convention of the real dataset
    class_id: int
    species: int  # 1 cat, 2 dog
    breed_id: int  # numbered within the species, as in the real list.txt
    palette: tuple[tuple[int, int, int], ...]  # the breed's colour family


_BREEDS = (
    _Breed("Blobcat", 1, 1, 1, ((226, 128, 48), (200, 96, 40), (236, 170, 86), (178, 110, 62))),
    _Breed("blob_dog", 2, 2, 1, ((70, 110, 200), (96, 84, 176), (64, 142, 168), (120, 130, 190))),
)

_LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID\n"
    f"#ID: 1:{len(_BREEDS)} Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-1:Cat 1:1:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)


def make_synthetic_dataset(
    root: str | os.PathLike,
    num_images: int = 60,
    seed: int = 0,
    min_size: int = 48,
    max_size: int = 96,
    test_fraction: float = 0.3,
) -> Path:
    """Write (or reuse) a synthetic dataset under ROOT/oxford-iiit-pet and return that folder.

    Reuses an existing synthetic folder made with the same arguments; regenerates one made
    with other arguments; raises DataError for a folder without the synthetic marker (it may
    be the real dataset, which is never modified).
    """
    _check_args(num_images, seed, min_size, max_size, test_fraction)
    args = {
        "num_images": int(num_images),
        "seed": int(seed),
        "min_size": int(min_size),
        "max_size": int(max_size),
        "test_fraction": float(test_fraction),
    }
    root = Path(root)
    target = root / DATASET_DIRNAME
    if _existing_matches(target, args):
        return target

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{DATASET_DIRNAME}.synthetic-tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the dataset should read like any folder
        _generate(tmp, args)
        _swap_into_place(tmp, target, args)
    finally:
        # Left over only on failure, or when another process won the race to create `target`.
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_args(num_images: int, seed: int, min_size: int, max_size: int, test_fraction: float) -> None:
    # Two images per breed at least: one for trainval and one for test.
    if int(num_images) < 2 * len(_BREEDS):
        raise ValueError(f"num_images must be >= {2 * len(_BREEDS)}, got {num_images}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    # Below 16 px the 2-3 px border ring would swallow the pet.
    if int(min_size) < 16 or int(max_size) < int(min_size):
        raise ValueError(f"need 16 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def _read_marker(target: Path) -> dict | None:
    """The marker's content, or None when `target` holds no synthetic marker."""
    marker = target / MARKER_NAME
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{marker} is unreadable ({exc}); refusing to touch {target}") from exc
    if not isinstance(data, dict) or data.get("generator") != __name__:
        raise DataError(f"{marker} was not written by {__name__}; refusing to touch {target}")
    return data


def _existing_matches(target: Path, args: dict) -> bool:
    """True if `target` is a synthetic dataset made with `args`; raise if it may be real data."""
    if not os.path.lexists(target):
        return False
    if not target.is_dir() or target.is_symlink():
        raise DataError(f"{target} exists and is not a synthetic dataset folder; refusing to touch it")
    marker = _read_marker(target)
    if marker is None:
        if not any(target.iterdir()):
            return False  # an empty folder holds nothing to lose
        raise DataError(f"{target} exists without {MARKER_NAME} (a real dataset?); refusing to overwrite it")
    return marker.get("format_version") == FORMAT_VERSION and marker.get("args") == args


def _swap_into_place(tmp: Path, target: Path, args: dict) -> None:
    """Rename the finished `tmp` folder to `target`, replacing only a proven synthetic one."""
    old: Path | None = None
    if os.path.lexists(target):
        # Re-check right before moving: the folder may have changed since the first look.
        if _existing_matches(target, args):
            return
        if any(target.iterdir()):
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{DATASET_DIRNAME}.synthetic-old-"))
            os.replace(target, old / "data")
        else:
            target.rmdir()
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process finished first; its result is as good as ours if the args match.
        if not _existing_matches(target, args):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _generate(out: Path, args: dict) -> None:
    images_dir = out / "images"
    trimaps_dir = out / "annotations" / "trimaps"
    images_dir.mkdir(parents=True)
    trimaps_dir.mkdir(parents=True)

    seed = args["seed"]
    split_rng = np.random.default_rng([seed, 1_000_003])  # a stream apart from the per-image ones
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    shares = np.zeros(3)
    for b, breed in enumerate(_BREEDS):
        # Balanced: the breeds differ by at most one image; each breed is in both splits.
        n = args["num_images"] // len(_BREEDS) + (1 if b < args["num_images"] % len(_BREEDS) else 0)
        n_test = min(max(round(n * args["test_fraction"]), 1), n - 1)
        test_ks = set((split_rng.permutation(n)[:n_test] + 1).tolist())
        for k in range(1, n + 1):
            rng = np.random.default_rng([seed, b, k])
            w = int(rng.integers(args["min_size"], args["max_size"] + 1))
            h = int(rng.integers(args["min_size"], args["max_size"] + 1))
            image, trimap = _draw_sample(rng, breed, h, w)
            image_id = f"{breed.name}_{k}"
            Image.fromarray(image, "RGB").save(images_dir / f"{image_id}.jpg", "JPEG", quality=JPEG_QUALITY)
            Image.fromarray(trimap, "L").save(trimaps_dir / f"{image_id}.png", "PNG")
            shares += np.bincount(trimap.ravel(), minlength=4)[1:4]
            split = "test" if k in test_ks else "trainval"
            lines[split].append(f"{image_id} {breed.class_id} {breed.species} {breed.breed_id}\n")

    ann = out / "annotations"
    for split, split_lines in lines.items():
        (ann / f"{split}.txt").write_text("".join(split_lines))
    (ann / "list.txt").write_text(_LIST_HEADER + "".join(lines["trainval"] + lines["test"]))
    shares = shares / shares.sum()
    write_json(
        out / MARKER_NAME,
        {
            "generator": __name__,
            "format_version": FORMAT_VERSION,
            "args": args,
            "breeds": [breed.name for breed in _BREEDS],
            "counts": {split: len(split_lines) for split, split_lines in lines.items()},
            "pixel_shares": {name: round(float(shares[code - 1]), 4) for name, code in TRIMAP_CODES.items()},  # shares of values 1..3
        },
    )


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation with numpy shifts (scipy is not a dependency)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def _shape_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A field f(y, x) whose sublevel sets {f < s} are one irregular blob (body + head) growing with s."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = h * rng.uniform(0.4, 0.6)
    cx = w * rng.uniform(0.4, 0.6)
    angle = rng.uniform(0, np.pi)
    a = w * rng.uniform(0.26, 0.36)
    b = h * rng.uniform(0.18, 0.28)
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * cos + (yy - cy) * sin) / a
    v = (-(xx - cx) * sin + (yy - cy) * cos) / b
    theta = np.arctan2(v, u)
    # Wobbly outline: a few low-frequency harmonics of the polar angle.
    wobble = 1.0 + sum(rng.uniform(0.03, 0.12) * np.cos(m * theta + rng.uniform(0, 2 * np.pi)) for m in (2, 3, 5))
    body = np.sqrt(u * u + v * v) / wobble

    # Head: a circle at one end of the body's long axis.
    side = rng.choice([-1.0, 1.0])
    hx = cx + side * 0.85 * a * cos
    hy = cy + side * 0.85 * a * sin
    hr = min(h, w) * rng.uniform(0.14, 0.2)
    head = np.sqrt((xx - hx) ** 2 + (yy - hy) ** 2) / hr
    return np.minimum(body, head)


def _trimap_for(field: np.ndarray, scale: float, erode_steps: int) -> np.ndarray:
    pet = field < scale
    outer = _dilate(pet)
    inner = pet
    for _ in range(erode_steps):
        inner = _erode(inner)
    trimap = np.full(field.shape, TRIMAP_BACKGROUND, dtype=np.uint8)
    trimap[outer] = TRIMAP_BORDER
    trimap[inner] = TRIMAP_PET
    return trimap


def _fit_trimap(field: np.ndarray, target_share: float, erode_steps: int) -> np.ndarray:
    """Scale the blob so the pet class (without the border ring) covers about `target_share`."""
    lo, hi = 0.2, 4.0
    for _ in range(20):  # bisection: the share grows monotonically with the scale
        mid = 0.5 * (lo + hi)
        share = float(np.mean(_trimap_for(field, mid, erode_steps) == TRIMAP_PET))
        if share < target_share:
            lo = mid
        else:
            hi = mid
    return _trimap_for(field, 0.5 * (lo + hi), erode_steps)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float64)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c0 = rng.uniform(20, 235, size=3)
    c1 = rng.uniform(20, 235, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    img = c0 + (c1 - c0) * ramp[..., None]
    if rng.random() < 0.6:
        period = rng.uniform(5, 16)
        s_angle = rng.uniform(0, np.pi)
        stripes = np.sin(2 * np.pi * (xx * np.cos(s_angle) + yy * np.sin(s_angle)) / period)
        img += rng.uniform(15, 40) * stripes[..., None] * rng.uniform(-1, 1, size=3)
    img += rng.uniform(20, 45) * _smooth_noise(rng, h, w, int(rng.integers(3, 7)))[..., None] * rng.uniform(-1, 1, size=3)
    img += rng.normal(0, rng.uniform(5, 14), size=(h, w, 3))
    return img


def _pet_texture(rng: np.random.Generator, breed: _Breed, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.array(breed.palette[int(rng.integers(len(breed.palette)))], dtype=np.float64)
    base += rng.normal(0, 12, size=3)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    # Fur-like structure: darker tabby stripes for cats, patches for dogs.
    if breed.species == 1:
        angle = rng.uniform(0, np.pi)
        stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(4, 9))
        img *= (1.0 - 0.22 * (stripes > 0.3))[..., None]
    else:
        patches = _smooth_noise(rng, h, w, int(rng.integers(3, 6)))
        img *= (1.0 - 0.3 * (patches > 0.35))[..., None]
    img *= (1.0 + 0.12 * _smooth_noise(rng, h, w, 2))[..., None]  # shading
    img += rng.normal(0, 7, size=(h, w, 3))
    return img


def _draw_sample(rng: np.random.Generator, breed: _Breed, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 HxWx3, trimap uint8 HxW) pair."""
    field = _shape_field(rng, h, w)
    trimap = _fit_trimap(field, rng.uniform(0.25, 0.35), erode_steps=int(rng.integers(1, 3)))
    background = _background(rng, h, w)
    pet = _pet_texture(rng, breed, h, w)
    # Soft edge: the border ring gets mixed colours, which is why it is "not classified".
    alpha = (trimap == TRIMAP_PET).astype(np.float64)
    alpha[trimap == TRIMAP_BORDER] = 0.5
    alpha = _box_blur(alpha)
    image = background * (1 - alpha[..., None]) + pet * alpha[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), trimap


def _box_blur(field: np.ndarray) -> np.ndarray:
    """3x3 mean with edge replication."""
    padded = np.pad(field, 1, mode="edge")
    h, w = field.shape
    return sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def synthetic_split(cfg: DataConfig, split: str) -> SplitFiles:
    """`data.source: synthetic`: generate the dataset into data.root (once; reused when it matches), then read it."""
    make_synthetic_dataset(cfg.root, num_images=cfg.synthetic_images, seed=0)
    return open_split(cfg.root, split)

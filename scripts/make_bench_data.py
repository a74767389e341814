"""Write a full-size Oxford-IIIT Pet stand-in for GPU benchmarks, built from the real two-breed slice.

The full dataset (3,680 trainval and 3,669 test images) cannot be downloaded on our machines, but
a throughput benchmark needs a dataset of that size with a realistic decode cost. This script
copies the slice's real JPEG images and trimaps, byte for byte (shutil.copyfile, no hard links:
the output is independent of the source), under new ids until each split has the requested
count, in the original layout that torchvision's OxfordIIITPet reads unchanged:

    python scripts/make_bench_data.py --from ../shared/data --out data/bench
    # then data.root: data/bench (or benchmark.py --data-root data/bench)

--from and --out are data roots, the folders that hold oxford-iiit-pet/ (as `data.root`). New ids
keep the breed name, e.g. `Abyssinian_b00001`, so the class, species and breed columns stay true.
Only images listed in a source split and having a trimap are used. Trainval copies come from source
trainval images only and test copies from source test images only (no leakage), cycling through
each split's list in order, one breed after another. Same arguments give identical bytes.

The output is built in a hidden sibling folder and moved into place, so an interrupted run never
leaves a half dataset (a killed run may leave a `.oxford-iiit-pet.partial-*` folder: delete it).
A marker file, oxford-iiit-pet/.bench_data.json, records the arguments: a rerun with the same ones
does nothing; with others it rebuilds the folder; a folder without the marker is never touched (it
may be a real dataset). Bad input: one line on stderr, exit 2; a failed write: exit 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

DATASET = "oxford-iiit-pet"
MARKER = ".bench_data.json"
FORMAT_VERSION = 1  # bump when the generated content changes
LIST_HEADER = (  # the official list.txt header, as in the real annotations
    "#Image CLASS-ID SPECIES BREED ID\n"
    "#ID: 1:37 Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-25:Cat 1:12:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)


class InputError(Exception):
    """Bad arguments or source data: reported as one line, exit 2."""


def read_sources(pet: Path, split: str) -> list[tuple[str, str]]:
    """(id, 'CLASS SPECIES BREED') of the split's listed images that have an image and a trimap.

    In list order, interleaved across breeds (one of each breed in turn), so a small count still has every breed.
    """
    by_breed: dict[str, list[tuple[str, str]]] = {}
    for line in (pet / "annotations" / f"{split}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4:
            raise InputError(f"malformed line in {pet}/annotations/{split}.txt: {line!r}")
        image_id, columns = fields[0], " ".join(fields[1:])
        if (pet / "images" / f"{image_id}.jpg").is_file() and (pet / "annotations" / "trimaps" / f"{image_id}.png").is_file():
            by_breed.setdefault(columns, []).append((image_id, columns))
    sources = [pair for turn in itertools.zip_longest(*by_breed.values()) for pair in turn if pair]
    if not sources:
        raise InputError(f"{pet}/annotations/{split}.txt lists no image that has both a .jpg and a trimap")
    return sources


def plan(sources: dict[str, list[tuple[str, str]]], counts: dict[str, int]) -> dict[str, list[tuple[str, str, str]]]:
    """split -> [(new id, source id, columns)]: each split cycles through its own sources; ids are unique overall."""
    width, k, copies = max(5, len(str(sum(counts.values())))), 0, {}
    for split, count in counts.items():
        copies[split] = []
        for i in range(count):
            k += 1
            source_id, columns = sources[split][i % len(sources[split])]
            copies[split].append((f"{source_id.rsplit('_', 1)[0]}_b{k:0{width}d}", source_id, columns))
    return copies


def build(tmp: Path, src: Path, copies: dict[str, list[tuple[str, str, str]]], marker: dict) -> None:
    """Copy the files and write the split files, list.txt and (last) the marker into `tmp`."""
    (tmp / "images").mkdir()
    (tmp / "annotations" / "trimaps").mkdir(parents=True)
    with tqdm(total=sum(map(len, copies.values())), desc="copying", unit="img", disable=None) as bar:
        for rows in copies.values():
            for new_id, source_id, _ in rows:
                shutil.copyfile(src / "images" / f"{source_id}.jpg", tmp / "images" / f"{new_id}.jpg")
                shutil.copyfile(src / "annotations" / "trimaps" / f"{source_id}.png", tmp / "annotations" / "trimaps" / f"{new_id}.png")
                bar.update()
    lines = {split: sorted((int(c.split()[0]), f"{n} {c}\n") for n, _, c in rows) for split, rows in copies.items()}
    for split, rows in lines.items():
        (tmp / "annotations" / f"{split}.txt").write_text("".join(line for _, line in rows))
    (tmp / "annotations" / "list.txt").write_text(LIST_HEADER + "".join(line for _, line in sorted(lines["trainval"] + lines["test"])))
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def read_marker(pet: Path) -> dict | None:
    try:
        return json.loads((pet / MARKER).read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="src", metavar="DIR", required=True, help="data root holding the real slice's oxford-iiit-pet/")
    parser.add_argument("--out", metavar="DIR", required=True, help="data root to create; its oxford-iiit-pet/ is written")
    parser.add_argument("--trainval", type=int, default=3680, help="trainval images (default: the full dataset's 3680)")
    parser.add_argument("--test", type=int, default=3669, help="test images (default: the full dataset's 3669)")
    args = parser.parse_args(argv)
    src, out_root = Path(args.src).resolve() / DATASET, Path(args.out).resolve()
    out = out_root / DATASET
    counts = {"trainval": args.trainval, "test": args.test}
    marker = {"format": FORMAT_VERSION, "from": str(src), **counts}
    try:
        if min(counts.values()) < 1:
            raise InputError(f"--trainval and --test must be positive, got {args.trainval} and {args.test}")
        if not all((src / "annotations" / f"{s}.txt").is_file() for s in counts) or not (src / "images").is_dir():
            raise InputError(f"no Oxford-IIIT Pet dataset at {src} (--from is the folder that holds {DATASET}/)")
        if out.is_relative_to(src) or src.is_relative_to(out):
            raise InputError(f"--out dataset {out} overlaps the --from dataset {src}")
        if out_root.exists() and not out_root.is_dir():
            raise InputError(f"--out {out_root} exists and is not a folder")
        if out.exists() or out.is_symlink():
            existing = read_marker(out)
            if existing is None:
                raise InputError(f"refusing to write into {out}: it has no {MARKER}, so it may be a real dataset")
            if existing == marker:
                print(f"{out} is already complete ({args.trainval} trainval + {args.test} test images); nothing to do")
                return 0
        copies = plan({s: read_sources(src, s) for s in counts}, counts)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DATASET}.partial-", dir=out_root))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset should be readable as usual
            build(tmp, src, copies, marker)
            if out.exists() or out.is_symlink():  # our own older output (checked above): swap it out, then delete it
                old = out_root / f"{tmp.name}.old"
                os.replace(out, old)
                os.replace(tmp, out)
                old.unlink() if old.is_symlink() else shutil.rmtree(old)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:
        print(f"error: writing {out} failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.trainval} trainval + {args.test} test images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

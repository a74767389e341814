"""`predict` and the Predictor API: equivalence with native-resolution evaluation, TTA, every input mode,
bad inputs, output naming, refusal to overwrite. One tiny run on the real slice (32 px, seconds) serves all tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seg_pet.cli import main
from seg_pet.config import load_config
from seg_pet.data.oxford import read_trimap
from seg_pet.data.sources import build_datasets
from seg_pet.evaluation import evaluate_run
from seg_pet.labels import class_to_trimap, trimap_lut
from seg_pet.metrics import ConfusionMatrix
from seg_pet.predict import Predictor, collect_inputs, load_rgb, to_rgb
from seg_pet.tta import TTA_MODES, tta_logits
from seg_pet.viz import colorize
from tests.conftest import requires_pet, trained_tiny_run

pytestmark = [requires_pet, pytest.mark.xdist_group("tiny_shared_run")]  # one worker trains the shared run once


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return trained_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.from_run(run_dir, device="cpu")


def val_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """The run's validation images and trimaps, in the order evaluation visits them."""
    val = build_datasets(load_config(run_dir / "config.yaml"))["val"]
    return list(val.images), list(val.masks)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def predict(*args: str) -> int:
    """The exit code of `seg_pet predict ARGS` (argparse exits with SystemExit(2) on a bad flag)."""
    try:
        return main(["predict", *map(str, args)])
    except SystemExit as exc:
        return exc.code


# --------------------------------------------------------------------------- equivalence with evaluation


@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_predict_index_scores_like_native_resolution_evaluation(run_dir, tmp_path, tta):
    """predict --format index on the val images, scored against their trimaps, is evaluate --split val
    with eval.native_resolution: true: the same confusion matrix, pixel for pixel (and with TTA on both sides)."""
    images, trimaps = val_files(run_dir)
    out = tmp_path / "pred"
    assert predict("--run", run_dir, "--input", *images, "--out", out, "--format", "index", "--device", "cpu", "--tta", tta) == 0
    cfg = load_config(run_dir / "config.yaml")
    lut = torch.from_numpy(trimap_lut(cfg.data.border))
    matrix = ConfusionMatrix(3)
    for image, trimap in zip(images, trimaps):
        pred = torch.from_numpy(np.array(Image.open(out / "masks" / f"{image.stem}.png")))
        target = lut[read_trimap(trimap).as_subclass(torch.Tensor).long()]
        matrix.update(target, pred)
    metrics = evaluate_run(run_dir, split="val", overrides=["eval.native_resolution=true", f"eval.tta={tta}"], log=lambda *_: None)
    assert metrics["tta"] == tta
    assert matrix.mat.tolist() == metrics["confusion"]
    assert matrix.mat.sum() > 0 and (matrix.mat.sum(0) > 0).sum() >= 2  # more than one class predicted: a real comparison


def test_trimap_and_color_formats_encode_the_index_mask(run_dir, tmp_path, predictor):
    image = val_files(run_dir)[0][0]
    index = predictor.predict(image)
    for fmt in ("trimap", "color"):
        assert predict("--run", run_dir, "--input", image, "--out", tmp_path / fmt, "--format", fmt, "--device", "cpu") == 0
        written = np.array(Image.open(tmp_path / fmt / "masks" / f"{image.stem}.png"))
        expected = class_to_trimap("class")[index] if fmt == "trimap" else colorize(index, 3)
        np.testing.assert_array_equal(written, expected)
    assert set(np.unique(class_to_trimap("class")[index])) <= {1, 2, 3}


def test_overlay_and_probabilities(run_dir, tmp_path, predictor):
    image = val_files(run_dir)[0][0]
    out = tmp_path / "extras"
    assert predict("--run", run_dir, "--input", image, "--out", out, "--overlay", "--probabilities", "--device", "cpu") == 0
    rgb = load_rgb(image)
    overlay = np.array(Image.open(out / "overlays" / f"{image.stem}.png"))
    mask = np.array(Image.open(out / "masks" / f"{image.stem}.png"))
    expected = np.rint(0.6 * rgb.astype(np.float64) + 0.4 * colorize(mask, 3).astype(np.float64)).astype(np.uint8)
    np.testing.assert_array_equal(overlay, expected)
    with np.load(out / "probabilities" / f"{image.stem}.npz") as npz:
        probabilities = npz["probabilities"]
        assert list(npz["class_names"]) == ["pet", "background", "border"]
    assert probabilities.shape == (3, *rgb.shape[:2]) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(0), mask)


# --------------------------------------------------------------------------- TTA


class PerPixel(nn.Module):
    """A 1x1 convolution: exactly flip-equivariant, so hflip TTA must change nothing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.conv(x)


def test_hflip_tta_is_the_mean_of_the_two_passes(predictor):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = predictor.model
    with torch.inference_mode():
        expected = (model(x) + model(x.flip(-1)).flip(-1)) / 2
        got = tta_logits(model, x, "hflip")
        plain = tta_logits(model, x, "none")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, plain)  # the U-Net is not flip-equivariant: TTA does change its logits


def test_hflip_tta_on_a_flip_symmetric_input(predictor):
    """A mirror-symmetric image: with a flip-equivariant model hflip TTA gives exactly the no-TTA mask;
    with the U-Net (not equivariant) the TTA mask is itself mirror-symmetric."""
    half = np.random.default_rng(0).integers(0, 256, (48, 20, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    x = predictor.preprocess(symmetric)[None]
    model = PerPixel().eval()
    with torch.inference_mode():
        assert torch.equal(tta_logits(model, x, "hflip").argmax(1), tta_logits(model, x, "none").argmax(1))
        torch.testing.assert_close(tta_logits(model, x, "hflip"), tta_logits(model, x, "none"), rtol=0, atol=1e-6)
        asym = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # equivariance holds on any input
        torch.testing.assert_close(tta_logits(model, asym, "hflip"), tta_logits(model, asym, "none"), rtol=0, atol=1e-6)
    tta = Predictor(predictor.model, predictor.cfg, predictor.class_names, tta="hflip")
    mask = tta.predict(symmetric)
    np.testing.assert_array_equal(mask, mask[:, ::-1])


def test_hflip_scales_runs_six_passes_at_three_sizes():
    seen = []

    class Recorder(PerPixel):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    x = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        out = tta_logits(Recorder().eval(), x, "hflip+scales")
    assert out.shape == (1, 3, 128, 128)
    assert sorted(seen) == [(96, 96), (96, 96), (128, 128), (128, 128), (160, 160), (160, 160)]
    assert TTA_MODES == ("none", "hflip", "hflip+scales")


# --------------------------------------------------------------------------- input modes


def write_modes(folder: Path) -> dict[str, tuple[int, int]]:
    """One image per mode the issue lists, as PIL writes them; name -> displayed (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    image.save(folder / "rgb.jpg")
    image.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    Image.fromarray(np.dstack([rgb, np.full((40, 56), 128, np.uint8)]), "RGBA").save(folder / "rgba.png")
    image.convert("L").save(folder / "gray.png")
    image.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(folder / "rotated.jpg", exif=exif)
    Image.fromarray((np.arange(40 * 56).reshape(40, 56) * 29).astype(np.uint16)).save(folder / "deep16.png")
    (folder / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    image.resize((33, 71)).save(folder / "nested" / "deeper" / "odd_size.PNG")
    (folder / "notes.txt").write_text("not an image: folders only pick image extensions")
    sizes = {name: (56, 40) for name in ("rgb", "palette", "rgba", "gray", "cmyk", "deep16")}
    sizes["rotated"] = (40, 56)
    sizes["nested/deeper/odd_size"] = (33, 71)
    return sizes


def test_image_modes_are_converted_as_documented(tmp_path):
    write_modes(tmp_path)
    rgb = np.array(Image.open(tmp_path / "rgb.jpg").convert("RGB"))
    gray16 = np.asarray(Image.open(tmp_path / "deep16.png"))
    assert Image.open(tmp_path / "deep16.png").mode.startswith("I")  # really 16-bit
    expected16 = np.clip(np.rint(gray16 / 257.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(load_rgb(tmp_path / "deep16.png"), np.repeat(expected16[..., None], 3, axis=-1))
    rgba = load_rgb(tmp_path / "rgba.png")
    np.testing.assert_array_equal(rgba, np.asarray(Image.open(tmp_path / "rgba.png"))[..., :3])  # alpha dropped
    gray = load_rgb(tmp_path / "gray.png")
    assert gray.shape == (40, 56, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert load_rgb(tmp_path / "palette.gif").shape == (40, 56, 3)
    assert load_rgb(tmp_path / "cmyk.jpg").shape == (40, 56, 3)
    rotated = load_rgb(tmp_path / "rotated.jpg")
    assert rotated.shape == (56, 40, 3)  # EXIF orientation applied
    plain = np.array(Image.open(tmp_path / "rotated.jpg").convert("RGB"))  # the same JPEG pixels, unrotated
    np.testing.assert_array_equal(rotated, np.rot90(plain, k=-1))
    assert np.abs(rotated.astype(int) - np.rot90(rgb, k=-1)).mean() < 40
    with Image.open(tmp_path / "palette.gif") as im:
        np.testing.assert_array_equal(to_rgb(im), np.array(im.convert("RGB")))


def test_files_folders_and_globs_with_nested_names(run_dir, tmp_path):
    sizes = write_modes(tmp_path / "photos")
    extra = tmp_path / "single" / "cat.jpg"
    extra.parent.mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(extra)
    globbed = tmp_path / "globbed"
    (globbed / "a").mkdir(parents=True)
    Image.fromarray(np.full((25, 35, 3), 90, np.uint8)).save(globbed / "a" / "dog.png")
    Image.fromarray(np.full((25, 35, 3), 90, np.uint8)).save(globbed / "a" / "skip.jpg")
    out = tmp_path / "out"
    code = predict(
        "--run",
        run_dir,
        "--input",
        tmp_path / "photos",
        extra,
        f"{globbed}/**/*.png",
        "--out",
        out,
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--overlay",
    )
    assert code == 0
    rows = {Path(row["mask"]).with_suffix("").as_posix(): row for row in read_rows(out / "predictions.csv")}
    expected = {f"masks/{key}": size for key, size in sizes.items()}
    expected["masks/cat"] = (30, 20)
    expected["masks/a/dog"] = (35, 25)  # a glob's files are named relative to its folder part
    assert set(rows) == set(expected)
    for key, (width, height) in expected.items():
        row = rows[key]
        assert row["status"] == "ok" and (int(row["width"]), int(row["height"])) == (width, height)
        mask = Image.open(out / f"{key}.png")
        assert mask.size == (width, height) and mask.mode == "L"
        assert Image.open(out / "overlays" / f"{key.removeprefix('masks/')}.png").size == (width, height)
        assert abs(sum(float(row[f"share_{c}"]) for c in ("pet", "background", "border")) - 1) < 1e-4
    assert not (out / "masks" / "notes.png").exists() and not (out / "masks" / "a" / "skip.png").exists()


def test_collect_inputs_errors_and_exclusions(tmp_path):
    from seg_pet.runtime.errors import SegPetError

    write_modes(tmp_path / "photos")
    (tmp_path / "photos" / "rgb.png").write_bytes((tmp_path / "photos" / "gray.png").read_bytes())
    with pytest.raises(SegPetError, match="both be written as rgb.png"):
        collect_inputs([tmp_path / "photos"])
    (tmp_path / "photos" / "rgb.png").unlink()
    with pytest.raises(SegPetError, match="no such file or folder"):
        collect_inputs([tmp_path / "nope.jpg"])
    with pytest.raises(SegPetError, match="matched no files"):
        collect_inputs([f"{tmp_path}/*.webp"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegPetError, match="no images"):
        collect_inputs([tmp_path / "empty"])
    out = tmp_path / "photos" / "out"
    (out / "masks").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out / "masks" / "rgb.png")
    items = collect_inputs([tmp_path / "photos", tmp_path / "photos" / "rgb.jpg"], exclude=out)
    assert len(items) == 8 and all("out" not in item.key.parts for item in items)  # its own outputs are not inputs; no duplicates


# --------------------------------------------------------------------------- bad inputs and existing outputs


def test_a_corrupt_file_fails_alone(run_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(good).save(folder / "good1.jpg")
    Image.fromarray(good).save(folder / "good2.png")
    (folder / "truncated.jpg").write_bytes((folder / "good1.jpg").read_bytes()[:300])
    (folder / "text.png").write_text("this is not a PNG")
    capsys.readouterr()
    assert predict("--run", run_dir, "--input", folder, "--out", tmp_path / "out", "--device", "cpu") == 1
    err = capsys.readouterr().err
    rows = {Path(row["path"]).name: row for row in read_rows(tmp_path / "out" / "predictions.csv")}
    assert {name: row["status"] for name, row in rows.items()} == {
        "good1.jpg": "ok",
        "good2.png": "ok",
        "truncated.jpg": "failed",
        "text.png": "failed",
    }
    for name in ("truncated.jpg", "text.png"):
        assert rows[name]["error"] and name in rows[name]["error"]
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1 and lines[0].startswith("failed: ")
        assert not (tmp_path / "out" / "masks" / Path(name).with_suffix(".png")).exists()
    assert (tmp_path / "out" / "masks" / "good1.png").is_file() and (tmp_path / "out" / "masks" / "good2.png").is_file()


def test_existing_outputs_are_refused_skipped_or_overwritten(run_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 24, 3), 60 * i, np.uint8)).save(folder / f"img{i}.png")
    out = tmp_path / "out"
    base = ["--run", run_dir, "--input", folder, "--out", out, "--device", "cpu"]
    assert predict(*base) == 0
    mask = out / "masks" / "img0.png"
    mask.write_bytes(b"sentinel")  # any change by a later call would show
    capsys.readouterr()
    assert predict(*base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--skip-existing" in err and "--overwrite" in err
    assert mask.read_bytes() == b"sentinel"
    Image.fromarray(np.full((20, 24, 3), 9, np.uint8)).save(folder / "img2.png")  # a new input
    assert predict(*base, "--skip-existing") == 0
    assert mask.read_bytes() == b"sentinel" and (out / "masks" / "img2.png").is_file()
    assert {Path(row["path"]).name: row["status"] for row in read_rows(out / "predictions.csv")} == {
        "img0.png": "ok",
        "img1.png": "ok",
        "img2.png": "ok",
    }
    assert predict(*base, "--overwrite") == 0
    assert Image.open(mask).size == (24, 20)
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]
    assert predict(*base, "--overwrite", "--skip-existing") == 2


@pytest.mark.parametrize("case", ["no_run", "bad_checkpoint", "no_match", "bad_tta", "bad_device"])
def test_bad_run_checkpoint_flag_or_inputs_exit_2_with_one_line(run_dir, tmp_path, capsys, case):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    args = {
        "no_run": ["--run", tmp_path, "--input", image],
        "bad_checkpoint": ["--run", run_dir, "--input", image, "--checkpoint", tmp_path / "x.png"],
        "no_match": ["--run", run_dir, "--input", tmp_path / "missing" / "*.jpg"],
        "bad_tta": ["--run", run_dir, "--input", image, "--tta", "vflip"],
        "bad_device": ["--run", run_dir, "--input", image, "--device", "tpu:0"],
    }[case]
    capsys.readouterr()
    assert predict(*args, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the Python API


def test_predictor_api_matches_the_cli(run_dir, tmp_path, predictor):
    """Same batches, same masks. (A batch of 3 and three batches of 1 can differ on a near-tie pixel or so:
    CPU convolutions sum in a batch-dependent order, ~1e-6 in the logits; the docs say so.)"""
    images = val_files(run_dir)[0][:3]
    assert predict("--run", run_dir, "--input", *images, "--out", tmp_path / "out", "--device", "cpu", "--batch-size", "1") == 0
    assert predict("--run", run_dir, "--input", *images, "--out", tmp_path / "out3", "--device", "cpu", "--batch-size", "3") == 0
    for cli_batch, image in zip(predictor.predict_batch(images), images):
        np.testing.assert_array_equal(cli_batch, np.array(Image.open(tmp_path / "out3" / "masks" / f"{image.stem}.png")))
    for image in images:
        cli_mask = np.array(Image.open(tmp_path / "out" / "masks" / f"{image.stem}.png"))
        api_mask = predictor.predict(image)
        assert api_mask.dtype == np.uint8 and api_mask.shape == cli_mask.shape
        np.testing.assert_array_equal(api_mask, cli_mask)
        logits = predictor.predict_logits(image)
        assert logits.shape == (3, *cli_mask.shape) and logits.dtype == np.float32
        np.testing.assert_array_equal(logits.argmax(0), cli_mask)
        with Image.open(image) as im:
            np.testing.assert_array_equal(predictor.predict(im), cli_mask)  # a PIL image works too
    np.testing.assert_array_equal(predictor.predict(load_rgb(images[0])), predictor.predict(images[0]))

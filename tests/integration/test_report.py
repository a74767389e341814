"""`seg_pet report`: the page of one run, of several, of an unfinished one; bad input; the template is package data."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from seg_pet.cli import main
from tests.conftest import REPO, requires_pet, trained_tiny_run

pytestmark = [requires_pet, pytest.mark.slow]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return trained_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def variants(finished, module_tmp) -> dict[str, Path]:
    """Copies of the finished run: one with another optim.lr, one stopped after epoch 1 (no test yet)
    whose rows predate boundary IoU."""
    base = module_tmp
    other = base / "other_lr"
    shutil.copytree(finished, other)
    config = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(re.sub(r"(?m)^  lr: .*$", "  lr: 0.01", config))
    unfinished = base / "unfinished"
    shutil.copytree(finished, unfinished)
    for name in ("test_metrics.json", "per_image.csv"):
        (unfinished / name).unlink()
    shutil.rmtree(unfinished / "worst")
    first = json.loads((unfinished / "metrics.jsonl").read_text().splitlines()[0])
    first.pop("val_boundary_iou"), first.pop("val_mboundary_iou")
    (unfinished / "metrics.jsonl").write_text(json.dumps(first) + "\n")
    return {"other": other, "unfinished": unfinished}


def images(html: str) -> list[Image.Image]:
    """Every <img> of the page, decoded from its data: URI (a src that is not embedded fails)."""
    sources = re.findall(r'<img src="([^"]*)"', html)
    out = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    return out


def test_one_run(finished, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(finished), "--out", str(out)]) == 0
    html = out.read_text()
    test = json.loads((finished / "test_metrics.json").read_text())
    pics = images(html)
    assert len(pics) == 1 + 1 + 8  # curves, test confusion matrix, eval.worst panels
    assert all(p.size[0] > 100 and p.size[1] > 100 for p in pics)
    for heading in ("Curves", "Per class", "Per group", "Test confusion matrix", "Worst test images", "Monitor warnings", "Config"):
        assert f"<h3>{heading}</h3>" in html
    assert f"{test['miou']:.3f}" in html and f"{test['mboundary_iou']:.3f}" in html
    for row in test["groups"]["breed"]:
        assert f'<td class="l">{row["breed"]}</td>' in html
    assert "species" in html and "finished" in html and '<h2 id="comparison">' not in html
    assert "written to" in capsys.readouterr().out


def test_several_runs_compare_config_curves_and_numbers(finished, variants, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(finished), str(variants["other"]), str(variants["unfinished"]), "--out", str(out)]) == 0
    html = out.read_text()
    diff = html[html.index('<table class="config-diff">') : html.index("</table>", html.index('<table class="config-diff">'))]
    assert "optim.lr" in diff and "0.01" in diff and "0.003" in diff
    assert "run.name" not in diff  # identical keys are not listed
    numbers = html[html.index('<table class="numbers">') : html.index("</table>", html.index('<table class="numbers">'))]
    assert numbers.count("<tr>") == 1 + 3 and "unfinished" in numbers
    assert len(images(html)) == 1 + 3 * 1 + 2 * (1 + 8)  # overlay, each run's curves, two tested runs' confusion + worst


def test_unfinished_run_reports_what_it_has(variants, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(variants["unfinished"]), "--out", str(out)]) == 0
    html = out.read_text()
    assert "unfinished: 1 of 2 epochs" in html and "No test metrics" in html and "No worst/ panels" in html
    assert len(images(html)) == 1  # the curves of its one epoch


@pytest.mark.parametrize(
    "case, message",
    [("missing", "no such folder"), ("not_run", "not a seg_pet run folder"), ("out_dir", "is a folder"), ("exists", "--overwrite")],
)
def test_bad_input_is_one_line_exit_2(finished, tmp_path, capsys, case, message):
    run, out = finished, tmp_path / "report.html"
    if case == "missing":
        run = tmp_path / "nope"
    elif case == "not_run":
        run = tmp_path
    elif case == "out_dir":
        out = tmp_path
    else:
        out.write_text("keep me")
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if case == "exists":
        assert out.read_text() == "keep me"
        assert main(["report", str(run), "--out", str(out), "--overwrite"]) == 0
        assert out.read_text().startswith("<!DOCTYPE html>")


def test_template_is_declared_package_data():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["seg_pet.report"]
    templates = sorted((REPO / "seg_pet" / "report" / "templates").iterdir())
    assert templates
    for path in templates:
        assert any(path.relative_to(REPO / "seg_pet" / "report").match(pattern) for pattern in data), path

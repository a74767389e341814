"""The report page in a real browser: headless Chromium loads it, every picture decodes, the tables
are there, and a screenshot of it is not blank. Skipped, with the reason, where no Chromium is installed
(.ci/run installs the Debian package when it is missing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg_pet.cli import main
from tests.conftest import requires_pet, trained_tiny_run

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)

pytestmark = [
    requires_pet,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium; .ci/run does it)"),
]

# Appended to a copy of the page: once everything has loaded, write each picture's decoded size and
# the number of tables into the DOM, which --dump-dom then prints.
PROBE = """<script>window.addEventListener("load", function () {
  var out = [];
  for (var i = 0; i < document.images.length; i++) { var im = document.images[i]; out.push(im.complete + ":" + im.naturalWidth + "x" + im.naturalHeight); }
  var p = document.createElement("pre"); p.id = "probe";
  p.textContent = "PROBE " + out.join(" ") + " TABLES " + document.querySelectorAll("table").length + " END";
  document.body.appendChild(p);
});</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    run = trained_tiny_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    return out


def test_every_picture_decodes_and_the_tables_are_there(page, tmp_path):
    probed = tmp_path / "probed.html"
    html = page.read_text()
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    result = chromium("--dump-dom", probed.as_uri())
    found = re.search(r"PROBE (.*) TABLES (\d+) END", result.stdout)
    assert found, f"the page did not finish loading: {result.stderr[-500:]}"
    sizes = found.group(1).split()
    assert len(sizes) == html.count("<img ") == 10
    for item in sizes:
        complete, size = item.split(":")
        width, height = map(int, size.split("x"))
        assert complete == "true" and width > 100 and height > 100, item
    assert int(found.group(2)) == html.count("<table") == 3  # per class, and per group: breed, species


def test_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "shot.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert shot.is_file(), result.stderr[-500:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 20  # a blank or failed page is one flat colour
    top = pixels[:600]
    assert (top < 100).mean() > 0.005  # dark text and plot lines near the top: the page was rendered, not an empty frame

"""The run report: one self-contained HTML page (pictures embedded) about one run, or comparing several.

Reads only what a run folder holds (config.yaml, metrics.jsonl, test_metrics.json, per_image.csv,
worst/, plots/), so it works on a run that is unfinished or has no test metrics: each section says
what is missing. The page is the Jinja2 template templates/report.html.j2; the pictures are the
project's matplotlib figures (seg_pet.viz) as base64 PNGs.
"""

from seg_pet.report.page import build_report, read_run

__all__ = ["build_report", "read_run"]

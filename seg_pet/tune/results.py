"""What a search leaves in its folder: trials.csv, summary.md (also printed), best.yaml, and Optuna's two plots.

best.yaml is the base config with the best completed trial's values, named `<study>_best`, with the
base config's output folder and seed: `python -m seg_pet train --config best.yaml` trains it, and
its end-of-training test is the first look at the test split anything in the search took.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

from seg_pet.config import config_from_dict, dump_config
from seg_pet.runtime.fileio import atomic_path, atomic_write
from seg_pet.tune.space import Space, apply_params, decode_choice

TOP = 10  # trials listed in the summary


def trial_rows(study, space: Space) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else math.nan
        steps = sorted(t.intermediate_values)
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value if t.value is not None else math.nan,
            **{p.key: decode_choice(t.params[p.key]) if p.key in t.params else "" for p in space.params},
            "epochs": len(steps),
            "last_val_miou": t.intermediate_values[steps[-1]] if steps else math.nan,
            "seconds": seconds,
            "note": t.user_attrs.get("error") or t.user_attrs.get("diverged") or "",
            "run_dirs": " ".join(t.user_attrs.get("run_dirs", [])),
        }
        rows.append(row)
    return rows


def cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def write_trials_csv(path: Path, rows: list[dict[str, Any]], space: Space) -> None:
    columns = ["trial", "state", "value", *(p.key for p in space.params), "epochs", "last_val_miou", "seconds", "note", "run_dirs"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: cell(row[k]) for k in columns})
    with atomic_write(path) as f:
        f.write(out.getvalue())


def best_config_text(raw: dict[str, Any], params: dict[str, Any], study_name: str) -> str:
    run = raw.get("run") or {}
    values = {**params, "run.name": f"{study_name}_best"}
    if "output_dir" in run:
        values["run.output_dir"] = run["output_dir"]
    return dump_config(config_from_dict(apply_params(raw, values)))


def summary_markdown(study, rows: list[dict[str, Any]], space: Space, out: Path, command: str) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    lines = [
        f"# tune study `{study.study_name}`",
        "",
        f"    {command}",
        "",
        f"{len(rows)} trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed"
        + (f", {counts['running']} running" if counts["running"] else "")
        + f". Value: mean validation mIoU over the last {space.last_epochs} epoch(s)"
        + (f", mean over {space.seeds} seeds" if space.seeds > 1 else "")
        + f"; pruner: {space.pruner}. The test split was not read.",
        "",
    ]
    done = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: -r["value"])
    if not done:
        lines.append("No trial completed: no best.yaml.")
        return "\n".join(lines) + "\n"
    keys = [p.key for p in space.params]
    lines += [
        f"Best: trial {done[0]['trial']}, value {done[0]['value']:.4f}. Train it: `python -m seg_pet train --config {out / 'best.yaml'}`",
        "",
        f"| trial | value | {' | '.join(keys)} | epochs | seconds |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for r in done[:TOP]:
        lines.append(f"| {r['trial']} | {r['value']:.4f} | {' | '.join(cell(r[k]) for k in keys)} | {r['epochs']} | {r['seconds']:.0f} |")
    if len(done) > TOP:
        lines.append(f"\n({len(done) - TOP} more complete trials in trials.csv)")
    return "\n".join(lines) + "\n"


def save_plots(study, out: Path) -> list[str]:
    """history.png once a trial completed, importances.png once two did. Notes on what was left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    notes = []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots = {}
    if complete:
        plots["history.png"] = ovm.plot_optimization_history
    if len(complete) >= 2:
        plots["importances.png"] = ovm.plot_param_importances
    else:
        notes.append(
            f"importances.png needs at least 2 complete trials ({len(complete)} so far)"
            + ("; history.png at least 1" if not complete else "")
        )
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. every completed trial had the same values
                notes.append(f"{name} not drawn: {exc}")
                continue
        fig = ax.figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    return notes


def write_results(study, space: Space, raw: dict[str, Any], out: Path, command: str) -> str:
    """Every output file; returns the summary text."""
    rows = trial_rows(study, space)
    write_trials_csv(out / "trials.csv", rows, space)
    done = [r for r in rows if r["state"] == "complete"]
    if done:
        best = study.best_trial
        params = {p.key: decode_choice(best.params[p.key]) for p in space.params}
        with atomic_write(out / "best.yaml") as f:
            f.write(f"# seg_pet tune: best trial {best.number} of study {study.study_name} (value {best.value:.4f}); see summary.md\n")
            f.write(best_config_text(raw, params, study.study_name))
    text = summary_markdown(study, rows, space, out, command)
    notes = save_plots(study, out)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with atomic_write(out / "summary.md") as f:
        f.write(text)
    return text

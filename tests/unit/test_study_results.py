"""The loss study's verdicts: the two convergence rules, collapse, the learned step, and the summary over seeds."""

from __future__ import annotations

import math

import pytest

from seg_pet.study.results import accuracy_rule, iou_rule, is_collapsed, judge, learned_step, summarise, summary_markdown


def metrics(acc: float, iou: dict[str, float], gt: dict[str, float], pred: dict[str, float]) -> dict:
    return {"pixel_acc": acc, "iou": iou, "gt_share": gt, "pred_share": pred}


@pytest.mark.parametrize(
    "ious, expected",
    [
        ({"foreground": 0.97, "background": 0.99}, True),  # solved
        ({"foreground": 0.90, "background": 0.95}, True),  # exactly at the threshold
        ({"foreground": 0.89, "background": 0.99}, False),  # foreground just short
        ({"foreground": 0.951, "background": 0.0}, False),  # 95 % fg, all predicted fg: collapsed
        ({"foreground": 0.0, "background": 0.95}, False),  # 5 % fg, all predicted bg: collapsed
        ({"pet": 0.95, "background": 0.97, "border": math.nan}, True),  # absent class not scored
        ({"foreground": math.nan, "background": math.nan}, False),  # nothing scored
    ],
)
def test_iou_rule(ious, expected):
    assert iou_rule(ious, 0.9) is expected


@pytest.mark.parametrize(
    "acc, base, expected",
    [
        (0.975, 0.95, True),  # 5 % or 95 % foreground: half the gap from 0.95 to 1
        (0.974, 0.95, False),
        (0.95, 0.95, False),  # the base rate itself: predicting the majority everywhere
        (0.75, 0.5, True),  # balanced: half-way from 0.5 to 1
        (0.74, 0.5, False),
    ],
)
def test_accuracy_rule_is_half_the_gap_above_the_base_rate(acc, base, expected):
    assert accuracy_rule(acc, base, 0.5) is expected


def test_collapsed_means_one_class_everywhere():
    assert is_collapsed({"foreground": 1.0, "background": 0.0})
    assert is_collapsed({"foreground": 0.996, "background": 0.004})
    assert not is_collapsed({"foreground": 0.99, "background": 0.01})
    assert not is_collapsed({"foreground": 0.5, "background": 0.5})


@pytest.mark.parametrize(
    "m, outcome",
    [
        (
            metrics(
                0.998,
                {"foreground": 0.96, "background": 0.99},
                {"foreground": 0.05, "background": 0.95},
                {"foreground": 0.05, "background": 0.95},
            ),
            "converged",
        ),
        (
            metrics(
                0.985,
                {"foreground": 0.75, "background": 0.98},
                {"foreground": 0.05, "background": 0.95},
                {"foreground": 0.05, "background": 0.95},
            ),
            "accurate",
        ),  # the original's rule holds, the IoU rule does not
        (
            metrics(
                0.96,
                {"foreground": 0.4, "background": 0.96},
                {"foreground": 0.05, "background": 0.95},
                {"foreground": 0.03, "background": 0.97},
            ),
            "partial",
        ),
        (
            metrics(
                0.95,
                {"foreground": 0.95, "background": 0.0},
                {"foreground": 0.95, "background": 0.05},
                {"foreground": 1.0, "background": 0.0},
            ),
            "collapsed",
        ),  # fg IoU 0.95 looks fine; background is never predicted
    ],
)
def test_judge(m, outcome):
    verdict = judge(m, True, 0.9, 0.5)
    assert verdict["outcome"] == outcome
    assert verdict["base_rate"] == 0.95
    assert verdict["converged_iou"] is (outcome == "converged")
    assert verdict["converged_accuracy"] is (outcome in ("converged", "accurate"))
    assert verdict["collapsed"] is (outcome == "collapsed")


def test_a_diverged_run_meets_no_rule():
    verdict = judge(None, False, 0.9, 0.5)
    assert verdict["outcome"] == "diverged" and not verdict["converged_accuracy"] and not verdict["converged_iou"]


def test_learned_step_is_the_first_logged_step_with_min_iou_half():
    rows = [{"step": 1, "min_iou": 0.0}, {"step": 10, "min_iou": 0.49}, {"step": 20, "min_iou": 0.5}, {"step": 30, "min_iou": 0.2}]
    assert learned_step(rows) == 20
    assert learned_step(rows[:2]) is None


def run(seed: int, loss: str, acc: float, min_iou: float, learned, outcome: str) -> dict:
    return dict(
        task="fg 5%",
        fg_ratio=0.05,
        batch_norm=True,
        optimizer="adam",
        loss=loss,
        seed=seed,
        accuracy=acc,
        min_iou=min_iou,
        learned_step=learned,
        outcome=outcome,
        grad_norm_median=0.5 + seed,
        train_min_iou=min_iou,
        converged_accuracy=outcome in ("converged", "accurate"),
        converged_iou=outcome == "converged",
        collapsed=outcome == "collapsed",
    )


def test_summary_counts_seeds_and_gives_median_and_range():
    runs = [
        run(0, "cce", 0.99, 0.80, 100, "accurate"),
        run(1, "cce", 0.95, 0.0, None, "collapsed"),
        run(2, "cce", 0.998, 0.93, 300, "converged"),
        run(0, "dice", 0.97, 0.6, 50, "partial"),
    ]
    rows = summarise(runs)
    assert [(r["loss"], r["seeds"]) for r in rows] == [("cce", 3), ("dice", 1)]
    cce = rows[0]
    assert (cce["converged_accuracy"], cce["converged_iou"], cce["collapsed"], cce["diverged"]) == (2, 1, 1, 0)
    assert (cce["accuracy_median"], cce["accuracy_min"], cce["accuracy_max"]) == (0.99, 0.95, 0.998)
    assert (cce["min_iou_median"], cce["min_iou_min"], cce["min_iou_max"]) == (0.80, 0.0, 0.93)
    # The seed that never learned counts as infinity: median 300, range 100 to never.
    assert (cce["learned_step_median"], cce["learned_step_min"], cce["never_learned"]) == (300, 100, 1)
    assert math.isinf(cce["learned_step_max"])
    table = summary_markdown(rows)
    assert "| fg 5% | BN, adam | cce | 2/3 | 1/3 | 1/3 | 0.990 (0.950–0.998) | 0.80 (0.00–0.93) | 0.80 | 300 (100–never) | 1.5 |" in table
    assert "| fg 5% | BN, adam | dice | 0/1 | 0/1 | 0/1 | 0.970 | 0.60 | 0.60 | 50 | 0.5 |" in table

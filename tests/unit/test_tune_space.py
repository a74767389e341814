"""The search-space file of `tune`, checked against the config schema, and the pruning callback `train` calls each epoch."""

from __future__ import annotations

import optuna
import pytest

from seg_pet.runtime.errors import ConfigError
from seg_pet.tune.search import epoch_reporter, trial_value
from seg_pet.tune.space import apply_params, parse_space

RAW = {"data": {"image_size": 64}, "loss": {"name": "ce_dice"}, "optim": {"epochs": 6}}


def space(**params):
    return {"params": params}


def test_a_valid_space_parses_every_distribution() -> None:
    parsed = parse_space(
        {
            "objective": {"last_epochs": 2, "seeds": 2},
            "pruner": {"name": "threshold", "lower": 0.3},
            "params": {
                "optim.lr": {"type": "float", "low": "1e-4", "high": 1e-2, "log": True},  # YAML 1.1 reads 1e-4 as text
                "optim.warmup_epochs": {"type": "int", "low": 0, "high": 2},
                "data.crop_scale": {"type": "categorical", "choices": [[0.35, 1.0], [0.8, 1.0]]},
                "loss.name": {"type": "categorical", "choices": ["ce", "ce_dice"]},
            },
        },
        RAW,
    )
    assert [p.key for p in parsed.params] == ["optim.lr", "optim.warmup_epochs", "data.crop_scale", "loss.name"]
    assert (parsed.params[0].low, parsed.params[0].log) == (1e-4, True)
    assert (parsed.last_epochs, parsed.seeds, parsed.pruner, parsed.pruner_options["lower"]) == (2, 2, "threshold", 0.3)


@pytest.mark.parametrize(
    "data, message",
    [
        (space(**{"optim.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}), "unknown key optim.lrr; did you mean 'lr'"),
        (space(**{"optimiser.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}), "unknown config section 'optimiser'"),
        (
            space(**{"optim.lr": {"type": "gauss", "low": 1e-4, "high": 1e-2}}),
            "params.optim.lr.type: must be one of float, int, categorical",
        ),
        (space(**{"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}), "low must be less than high"),
        (space(**{"optim.lr": {"type": "float", "low": 0, "high": 1e-2, "log": True}}), "log: true needs low > 0"),
        (space(**{"optim.lr": {"type": "float", "low": 1e-4}}), "type float needs low and high"),
        (space(**{"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "step": 2}}), "unknown field 'step'"),
        (space(**{"optim.lr": {"type": "float", "low": 1e-4, "high": 20.0}}), "params.optim.lr (high 20.0): optim.lr"),  # schema: lr <= 10
        (space(**{"data.batch_size": {"type": "float", "low": 2, "high": 8}}), "data.batch_size: expected int"),
        (space(**{"data.batch_size": {"type": "int", "low": 2.5, "high": 8}}), "needs whole numbers"),
        (space(**{"loss.name": {"type": "categorical", "choices": ["ce", "bogus"]}}), "choice 'bogus'"),
        (space(**{"loss.name": {"type": "categorical", "choices": []}}), "expected a non-empty list"),
        (space(**{"loss.name": {"type": "categorical", "choices": ["ce", "ce"]}}), "listed twice"),
        (space(**{"data.crop_scale": {"type": "categorical", "choices": [[0.9, 0.2]]}}), "data.crop_scale: must be [min, max]"),
        (space(**{"run.seed": {"type": "int", "low": 0, "high": 3}}), "tune sets run.name, run.output_dir, run.seed itself"),
        (space(**{"optim.lr": 0.01}), "expected a distribution"),
        ({"params": {}}, "params: must map config keys"),
        ({"params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "objectve": {}}, "unknown section 'objectve'"),
        ({**space(**{"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}), "objective": {"last_epochs": 0}}, "objective.last_epochs"),
        ({**space(**{"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}), "pruner": {"name": "hyperband"}}, "pruner.name"),
        ({**space(**{"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}), "pruner": {"name": "threshold"}}, "needs lower or upper"),
    ],
)
def test_a_bad_space_names_its_key(data, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_space(data, RAW)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_loss_choice_that_conflicts_with_the_base_config_is_refused_up_front() -> None:
    raw = {**RAW, "loss": {"name": "ce_dice", "dice_weight": 2.0}}
    with pytest.raises(ConfigError, match="choice 'ce'.*loss.dice_weight does not apply"):
        parse_space(space(**{"loss.name": {"type": "categorical", "choices": ["ce_dice", "ce"]}}), raw)


def test_list_choices_reach_the_config_as_lists() -> None:
    parsed = parse_space(space(**{"data.crop_scale": {"type": "categorical", "choices": [[0.35, 1.0], [0.8, 1.0]]}}), RAW)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [parsed.params[0].suggest(study.ask()) for _ in range(10)]
    assert {tuple(v) for v in values} == {(0.35, 1.0), (0.8, 1.0)} and all(isinstance(v, list) for v in values)
    assert apply_params(RAW, {"data.crop_scale": values[0]})["data"]["crop_scale"] == values[0]
    assert RAW["data"] == {"image_size": 64}  # the base is not modified


def test_the_median_pruner_stops_a_trial_below_the_others_through_on_epoch() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    rows: list[dict] = []
    report = epoch_reporter(good, 0, rows)
    for epoch, miou in enumerate((0.5, 0.6, 0.7), start=1):
        report({"epoch": epoch, "val_miou": miou})
    study.tell(good, trial_value(rows, 2))
    assert study.best_value == pytest.approx(0.65)

    better, worse = study.ask(), study.ask()
    epoch_reporter(better, 0, [])({"epoch": 1, "val_miou": 0.8})  # above the median: goes on
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        epoch_reporter(worse, 0, [])({"epoch": 1, "val_miou": 0.1})


def test_the_value_is_the_mean_of_the_last_epochs() -> None:
    rows = [{"epoch": e, "val_miou": m} for e, m in enumerate((0.1, 0.4, 0.5, 0.6), start=1)]
    assert trial_value(rows, 3) == pytest.approx(0.5)
    assert trial_value(rows, 10) == pytest.approx(0.4)  # fewer epochs than asked: all of them

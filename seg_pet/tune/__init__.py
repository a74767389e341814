"""Hyperparameter search over config keys with Optuna (`python -m seg_pet tune`); docs/tune.md.

    space    the search-space file: distributions per config key, the objective, sampler and pruner
    search   Optuna's side: storage, study, pruner, the objective a trial runs (ordinary `train` runs, no test)
    results  trials.csv, summary.md, best.yaml, the plots
    run      the workflow: checks, worker processes, progress bar

Optuna is an optional dependency (`pip install -e ".[tune]"`); nothing here imports it at import time.
"""

from seg_pet.tune.run import TuneOutcome, run_tune

__all__ = ["TuneOutcome", "run_tune"]

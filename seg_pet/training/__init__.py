"""The training layer: `train(cfg)` and what it is made of.

train     the workflow, as a list of named steps
loop      one epoch of optimiser steps
state     Setup (model, loss, optimiser, schedule) and Progress; checkpoint state and restore
optim     OPTIMIZERS and SCHEDULES, by name
rundir    run-folder rules: create atomically, replace, resume
records   EpochRecord and its writers (metrics.jsonl, metrics.csv, console, curves)
monitors  per-epoch warnings for the classic failure modes
"""

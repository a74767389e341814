"""The training layer: `train(cfg)` and what it is made of.

train       the workflow, as a list of named steps
guard       signals, interruption and divergence messages, run-folder rollback: one context manager
epoch       one epoch: its data, steps and validation (-> EpochRecord), and what it saves
final_test  best.pt on the test split, once
loop        one epoch of optimiser steps
state       Setup (model, loss, optimiser, schedule) and Progress; checkpoint state and restore
optim       OPTIMIZERS and SCHEDULES, by name
rundir      run-folder rules: create atomically, replace, resume
records     EpochRecord and its writers (metrics.jsonl, metrics.csv, console, curves)
monitors    per-epoch warnings for the classic failure modes
"""

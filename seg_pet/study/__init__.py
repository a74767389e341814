"""Loss study: train many small runs over a grid and record how every loss and every loss's gradient behave.

Reproduces the classic CCE-vs-Dice experiment (G. Chlebus, "Semantic segmentation loss
functions", 2018): inputs are uniform noise, a pixel is foreground when its value exceeds
t = 1 - fg_ratio, so the class balance is set exactly; a few-layer conv net can learn the
rule because it is local. The grid is foreground ratios x losses x batch norm on/off x
optimiser, repeated for every seed in `study.seeds`. `study.losses` picks the loss family:
`classic` (the original's formulas, configs/study_classic.yaml) or `project` (seg_pet.losses,
configs/study.yaml). The same machinery runs on the real Pet slice (`data.source: pet`), where
the thin trimap `border` class is the minority.

    python -m seg_pet study --config configs/study_classic.yaml [--set study.seeds=[0]] [--overwrite]

Outputs in <study.output_dir>/<study.name>/: study_config.yaml; runs.csv (one row per run: settings,
every loss and the metrics on held-out data, the verdict); steps.csv (per run and logged step: every
loss's value and gradient norm on the training batch, accuracy, class IoUs, predicted foreground
share); summary.csv / summary.md (one row per grid cell over seeds); the figures (see `plots`).
runs.csv is rewritten and steps.csv appended after each run; an interrupted study writes the
summary and the figures from the runs it finished.

Every run with the same seed and foreground ratio sees the same batches in the same order, and
every run with the same seed, architecture and BN setting starts from the same weights, so the
comparison between losses and optimisers is paired, not confounded by luck of the draw.

Parts, in reading order: `losses` (the two loss families), `config` (the study's sections and
optimisers), `tasks` (the data of one grid row and the small networks), `train` (one run with
every loss logged), `results` (the convergence rules and the summary over seeds), `plots` (the
figures), `run` (the workflow).
"""

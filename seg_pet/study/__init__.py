"""Loss study: train many tiny runs over a grid and record how every loss and the gradient behave.

Reproduces the classic CE-vs-Dice experiment (G. Chlebus, "Semantic segmentation loss
functions", 2018): inputs are uniform noise, a pixel is foreground when its value exceeds
t = 1 - fg_ratio, so the class balance is set exactly; a few-layer conv net can learn the
rule because it is local. The grid is foreground ratios x losses x batch norm on/off x
optimiser. The same machinery runs on the real Pet slice (`data.source: pet`), where the
thin trimap `border` class is the minority.

    python -m seg_pet study --config configs/study.yaml [--set grid.losses=[ce,dice]] [--overwrite]

Outputs in <study.output_dir>/<study.name>/: study_config.yaml, runs.csv (one row per run:
settings, final value of every loss on held-out data, foreground IoU/Dice, converged),
steps.csv (per run and step: every loss on the training batch before the update, the global
gradient norm, the batch's foreground and lowest per-class IoU),
loss_curves.png, grad_norm_curves.png, final_iou_heatmap.png. Every file is written
atomically; runs.csv and steps.csv are rewritten after each run, so an interrupted
study keeps the runs it finished.

Every run with the same foreground ratio sees the same batches in the same order, and every
run with the same architecture and BN setting starts from the same weights, so the
comparison between losses and optimisers is paired, not confounded by luck of the draw.

Parts: `config` (the study's own sections, built and checked with the public seg_pet.config
helpers), `tasks` (the data of one grid row and the study's small networks), `run` (one run,
the grid, runs.csv / steps.csv, the workflow), `plots` (the figures).
"""

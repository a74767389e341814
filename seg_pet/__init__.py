"""seg_pet: semantic segmentation training on Oxford-IIIT Pet that tells the truth.

Module map (read in this order):
    config         YAML -> typed, validated dataclasses; --set overrides
    data           dataset, trimap remap, splits, loaders, pixel counts
    synthetic      a small generated dataset in the Oxford-IIIT Pet layout
    cache          decoded-image cache (data.cache: memory | disk | device), device-resident batches
    transforms     joint image/mask transforms (torchvision.transforms.v2), batched device augmentation
    models         smp model factory
    losses         loss factory (smp.losses / torch) and class weights
    metrics        confusion matrix -> IoU, Dice, precision, recall
    engine         one training epoch, one evaluation pass
    checkpoint     save/load checkpoints (weights_only), RNG state
    fileio         atomic writes
    visualisation  overlays, panels, curves, confusion plots
    diagnostics    `doctor` checks and per-epoch training monitors
    train          the training workflow (train -> engine -> metrics)
    evaluate       evaluating a finished run
    study          the CE-vs-Dice loss study
    cli            argument parsing; maps known errors to exit code 2
"""

__version__ = "0.1.0"

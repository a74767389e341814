"""seg_pet: semantic segmentation training on Oxford-IIIT Pet that tells the truth.

The package is layered; each layer imports only the ones below it (checked by `lint-imports`,
contracts in pyproject.toml). Top to bottom:

    cli         one module per command: parse, load config, call one function, map errors to exit codes
    study       the CE-vs-Dice loss study, on the public config, losses and metrics
    export      ONNX export, verified against torch
    predict     `Predictor`: a trained run applied to your own images
    doctor      checks of the data, model and loss wiring before training
    training    `train(cfg)`: the loop, optimisers, run folder, epoch records, monitors
    evaluation  `load_run`, the evaluation pass, `evaluate_split`, the `evaluate` command
    checkpoint  saving and safely loading checkpoints (checked against a schema)
    testlog     the record of every test-set evaluation in a run (test_evaluations.jsonl) and its rule
    viz, models, losses, metrics, tta
                pictures; the smp model factory; loss builders; confusion-matrix metrics; test-time augmentation
    data        Oxford-IIIT Pet reader, synthetic data, transforms, caches, loaders, DATASETS
    config      the schema (one declaration per key), loading, --set, validation, the docs reference
    labels, runtime
                the label contract (class names, trimap remap, ignore index, palette);
                Runtime (device, autocast, channels_last), seeds, signals, errors, atomic files,
                the one path checker every command uses (runtime.paths)

Each subpackage's docstring says what it owns.
"""

__version__ = "0.1.0"

"""The data layer: from files on disk to batches of (image, label) tensors.

    segmentation  the generic dataset (image + mask files, a LabelSpec, transforms, caches), decoding with
                one-line errors, SplitFiles, the train/val carve-out
    oxford      the Oxford-IIIT Pet reader: official split files, breeds as groups
    synthetic   a generated look-alike in the same layout, for tests and smoke runs
    folder      `data.source: folder`: your own images and masks, matched by stem, with declared classes
    sources     `DATASETS`: `data.source` name -> the function that finds a split's files
    transforms  joint image/mask transforms, and batched augmentation on the device
    cache       decoded-image caches (data.cache: memory | disk | device)
    loaders     seeded DataLoaders, device batches, worker counts, pixel counts

The label contract itself (LabelSpec: class names, mask coding, ignore index, palette) is seg_pet.labels,
two layers below; seg_pet.config.label_spec gives a config's spec, so config can check loss options against the classes.
"""

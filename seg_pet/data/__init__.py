"""The data layer: from files on disk to batches of (image, label) tensors.

    oxford      the Oxford-IIIT Pet reader: split files, decoding with one-line errors, the dataset class
    synthetic   a generated look-alike in the same layout, for tests and smoke runs
    sources     `DATASETS`: `data.source` name -> the function that finds a split's files
    transforms  joint image/mask transforms, and batched augmentation on the device
    cache       decoded-image caches (data.cache: memory | disk | device)
    loaders     seeded DataLoaders, device batches, worker counts, pixel counts

The label contract itself (class names, trimap remap, ignore index, palette) is seg_pet.labels,
one layer below, so that config can check loss options against the classes.
"""

"""Prediction with a trained run: the `Predictor` API and the `predict` command's batch over files.

    images      any image file or PIL image -> 8-bit RGB: EXIF rotation, GIF, RGBA, grayscale, CMYK, 16-bit
    predictor   Predictor.from_run(run_dir, checkpoint="best", device="auto", tta="none")
                  .predict(image)         -> (H, W) uint8 class ids at the image's own size
                  .predict_logits(image)  -> (C, H, W) float32 logits at the image's own size
                  .predict_batch(images)  -> label maps, one forward pass for all
    inputs      --input files, folders and glob patterns -> images and their output names
    files       predict_files: masks (+ overlays, probabilities) and predictions.csv for the `predict` command

Prediction mirrors native-resolution evaluation exactly: the model runs at the run's image_size,
and the logits (never the label map) are resized back to each image's size before the argmax.
Guide: docs/use_your_model.md.
"""

from seg_pet.predict.files import CSV_NAME, FORMATS, PredictOptions, PredictSummary, encode_mask, output_paths, predict_files
from seg_pet.predict.images import ImageLike, ImageReadError, as_rgb, load_rgb, to_rgb
from seg_pet.predict.inputs import IMAGE_EXTENSIONS, InputImage, collect_inputs
from seg_pet.predict.predictor import Predictor, runtime_for

__all__ = [
    "CSV_NAME",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "ImageLike",
    "ImageReadError",
    "InputImage",
    "PredictOptions",
    "PredictSummary",
    "Predictor",
    "as_rgb",
    "collect_inputs",
    "encode_mask",
    "load_rgb",
    "output_paths",
    "predict_files",
    "runtime_for",
    "to_rgb",
]

"""`infer`'s runtime, one module per job, gathered under the name callers have imported from:

  discovery.py    which images a run reads and what their outputs are called (ImageInput, list_images)
  prediction.py   one image through a Predictor: sliding window, stitch, whole-image tasks (predict_image)
  outputs.py      the files written per image and the summary of each (save_prediction, output_files)
  pictures.py     the pictures among them (seg panel, depth picture, PCA picture)
  prefetch.py     decoding ahead and copying ahead to the device (image_stream, to_device_ahead)
"""

from __future__ import annotations

from dinov3_deploy.reference.training.visualize import legend_strip

from .discovery import ImageInput, list_images
from .outputs import OUTPUT_SUFFIXES, output_files, save_prediction, top_k
from .pictures import pca_rgb, save_depth_picture
from .prediction import (
    STITCHES,
    Prediction,
    batch_windows_of,
    predict_image,
    resize_short_side,
    resolve_stitch,
    stitch_labels,
    window_logits,
    window_size,
)
from .prefetch import decoded, image_stream, to_device, to_device_ahead

__all__ = [
    "OUTPUT_SUFFIXES", "STITCHES", "ImageInput", "Prediction", "batch_windows_of", "decoded", "image_stream",
    "legend_strip", "list_images", "output_files", "pca_rgb", "predict_image", "resize_short_side",
    "resolve_stitch", "save_depth_picture", "save_prediction", "stitch_labels", "to_device", "to_device_ahead",
    "top_k", "window_logits", "window_size",
]

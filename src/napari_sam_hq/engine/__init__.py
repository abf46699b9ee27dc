"""The SAM-HQ engine: numpy in, numpy out; torch inside; no Qt, no napari."""

from .predictor import BatchPrediction, ImageEmbedding, Prediction, SamHQPredictor
from .transforms import Frames, preprocess_shape, resize_longest_side, to_model_rgb

__all__ = [
    "BatchPrediction",
    "Frames",
    "ImageEmbedding",
    "Prediction",
    "SamHQPredictor",
    "preprocess_shape",
    "resize_longest_side",
    "to_model_rgb",
]

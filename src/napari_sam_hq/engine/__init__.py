"""The SAM-HQ engine: numpy in, numpy out; torch inside; no Qt, no napari."""

from .predictor import BatchPrediction, ImageEmbedding, Prediction, SamHQPredictor
from .propagation import PropagationSettings, iter_propagate, seeds_from_labels, write_propagation
from .session import ObjectMask, SegmentationSession
from .store import EmbeddingStore, StoreWarning, default_store_root
from .tiling import Tile, TileGrid
from .transforms import Frames, preprocess_shape, resize_longest_side, to_model_rgb

__all__ = [
    "BatchPrediction",
    "EmbeddingStore",
    "Frames",
    "ImageEmbedding",
    "ObjectMask",
    "Prediction",
    "PropagationSettings",
    "SamHQPredictor",
    "SegmentationSession",
    "StoreWarning",
    "Tile",
    "TileGrid",
    "default_store_root",
    "iter_propagate",
    "preprocess_shape",
    "resize_longest_side",
    "seeds_from_labels",
    "to_model_rgb",
    "write_propagation",
]

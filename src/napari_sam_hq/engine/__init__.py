"""The SAM-HQ engine: numpy in, numpy out; torch inside; no Qt, no napari.

Names are exported lazily (PEP 562): ``import napari_sam_hq.engine`` and its torch-free
modules (store, session, tiling, settings, io) do not import torch; the predictor does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "BatchPrediction": "predictor",
    "Prediction": "predictor",
    "SamHQPredictor": "predictor",
    "ImageEmbedding": "embedding",
    "PropagationSettings": "propagation",
    "iter_propagate": "propagation",
    "seeds_from_labels": "propagation",
    "write_propagation": "propagation",
    "ObjectMask": "session",
    "SegmentationSession": "session",
    "EmbeddingStore": "store",
    "StoreWarning": "store",
    "default_store_root": "store",
    "Tile": "tiling",
    "TileGrid": "tiling",
    "Frames": "transforms",
    "preprocess_shape": "transforms",
    "resize_longest_side": "transforms",
    "to_model_rgb": "transforms",
    "AutoSettings": "settings",
}
__all__ = [
    "AutoSettings",
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

if TYPE_CHECKING:  # for type checkers and the API docs, which read this file statically
    from .embedding import ImageEmbedding
    from .predictor import BatchPrediction, Prediction, SamHQPredictor
    from .propagation import PropagationSettings, iter_propagate, seeds_from_labels, write_propagation
    from .session import ObjectMask, SegmentationSession
    from .settings import AutoSettings
    from .store import EmbeddingStore, StoreWarning, default_store_root
    from .tiling import Tile, TileGrid
    from .transforms import Frames, preprocess_shape, resize_longest_side, to_model_rgb


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""The SAM-HQ engine: numpy in, numpy out; torch inside; no Qt, no napari.

Grouped by idea, imports pointing down this list only (``tests/test_layers.py`` checks it):

- ``io``: files, batch runs on dask, measurement (what the command line is built on)
- ``annotation``: labels on disk with undo, and the Qt-free ``Annotator`` the widget drives
- ``tracking``: objects linked through time with divisions (laptrack), the CTC format
- ``adaptation``: decoder training from label images, refinement of label images
- ``automatic``: segment everything
- ``volumes``: sessions over stacks and tiled planes, the embedding store, propagation
- ``prediction``: the predictor of one image and its frames
- ``masks``, ``atomic``: mask helpers and atomic file writes every subpackage may use

Names are exported lazily (PEP 562): ``import napari_sam_hq.engine`` and its torch-free
modules (store, session, tiling, settings, io) do not import torch; the predictor does.
docs/architecture.md has the picture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "BatchPrediction": "prediction.predictor",
    "Prediction": "prediction.predictor",
    "SamHQPredictor": "prediction.predictor",
    "ImageEmbedding": "prediction.embedding",
    "Frames": "prediction.transforms",
    "preprocess_shape": "prediction.transforms",
    "resize_longest_side": "prediction.transforms",
    "to_model_rgb": "prediction.transforms",
    "ObjectMask": "volumes.session",
    "SegmentationSession": "volumes.session",
    "EmbeddingStore": "volumes.store",
    "StoreWarning": "volumes.store",
    "default_store_root": "volumes.store",
    "Tile": "volumes.tiling",
    "TileGrid": "volumes.tiling",
    "PropagationSettings": "volumes.propagation",
    "iter_propagate": "volumes.propagation",
    "seeds_from_labels": "volumes.propagation",
    "write_propagation": "volumes.propagation",
    "LabelVolume": "annotation.labels",
    "open_labels_zarr": "annotation.labels",
    "Annotator": "annotation.annotator",
    "AutoSettings": "automatic.settings",
    "iter_segment_everything": "automatic.modes",
    "TrainSettings": "adaptation.training",
    "iter_train": "adaptation.training",
    "RefineSettings": "adaptation.refine",
    "iter_refine": "adaptation.refine",
    "read_image": "io.files",
    "write_labels": "io.files",
    "iter_measure": "io.measure",
    "measure": "io.measure",
}
__all__ = [
    "Annotator",
    "AutoSettings",
    "BatchPrediction",
    "EmbeddingStore",
    "Frames",
    "ImageEmbedding",
    "LabelVolume",
    "ObjectMask",
    "Prediction",
    "PropagationSettings",
    "RefineSettings",
    "SamHQPredictor",
    "SegmentationSession",
    "StoreWarning",
    "Tile",
    "TileGrid",
    "TrainSettings",
    "default_store_root",
    "iter_measure",
    "iter_propagate",
    "iter_refine",
    "iter_segment_everything",
    "iter_train",
    "measure",
    "open_labels_zarr",
    "preprocess_shape",
    "read_image",
    "resize_longest_side",
    "seeds_from_labels",
    "to_model_rgb",
    "write_labels",
    "write_propagation",
]

if TYPE_CHECKING:  # for type checkers and the API docs, which read this file statically
    from .adaptation.refine import RefineSettings, iter_refine
    from .adaptation.training import TrainSettings, iter_train
    from .annotation.annotator import Annotator
    from .annotation.labels import LabelVolume, open_labels_zarr
    from .automatic.modes import iter_segment_everything
    from .automatic.settings import AutoSettings
    from .io.files import read_image, write_labels
    from .io.measure import iter_measure, measure
    from .prediction.embedding import ImageEmbedding
    from .prediction.predictor import BatchPrediction, Prediction, SamHQPredictor
    from .prediction.transforms import Frames, preprocess_shape, resize_longest_side, to_model_rgb
    from .volumes.propagation import PropagationSettings, iter_propagate, seeds_from_labels, write_propagation
    from .volumes.session import ObjectMask, SegmentationSession
    from .volumes.store import EmbeddingStore, StoreWarning, default_store_root
    from .volumes.tiling import Tile, TileGrid


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

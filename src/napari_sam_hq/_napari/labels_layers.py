"""The dock's labels layers: the one committed objects go to (created when missing, in a zarr
on disk when a dense array would be large), their bookkeeping bound once per layer
(``LayerLabels``), labels saved on disk offered again when an image is reopened, and writable
copies of lazy or foreign labels. No Qt: the dock hands in how to read its options."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_info, show_warning

from . import constants as C
from .layers import LayerLabels, spatial_shape

if TYPE_CHECKING:
    import napari


class LabelsLayers:
    """Labels layers of one viewer. ``chosen()`` names the layer picked in the dock (``choose``
    picks one), ``disk_gb()`` is the size above which new labels live on disk, ``root()`` the
    folder of labels kept on disk."""

    def __init__(self, viewer: napari.viewer.Viewer, *, chosen: Callable[[], str], choose: Callable[[str], None],
                 disk_gb: Callable[[], float], root: Callable[[], Path]) -> None:
        self.viewer = viewer
        self._chosen, self._choose, self._disk_gb, self._root = chosen, choose, disk_gb, root
        self._bindings: dict[Any, LayerLabels] = {}  # labels layer.unique_id -> its LabelVolume
        self._lock = threading.Lock()

    def path(self, image: napari.layers.Image) -> Path:
        """Where '<image>.labels.zarr' of ``image`` is kept when its labels live on disk."""
        from ..engine.annotation.labels import default_labels_path

        return default_labels_path(self._root(), image.name)

    def chosen_layer(self) -> napari.layers.Labels | None:
        name = self._chosen()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Labels) else None

    def of_image(self, image: napari.layers.Image, *, also_others: bool = False) -> list[napari.layers.Labels]:
        """The chosen labels layer (and, if ``also_others``, every other labels layer) of the
        image's shape; the preview layer never counts."""
        shape = spatial_shape(image)
        chosen = self._chosen()
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name != C.PREVIEW_LAYER
                and tuple(layer.data.shape) == shape and (layer.name == chosen or also_others)]

    def offer_saved(self, image: napari.layers.Image) -> None:
        """Reopening an image: its labels saved on disk come back as the labels layer."""
        from ..engine.annotation.labels import open_labels_zarr

        path = self.path(image)
        if not (path / "zarr.json").exists() or C.LABELS_LAYER in self.viewer.layers:
            return
        try:
            array = open_labels_zarr(path, spatial_shape(image), create=False)
        except (ValueError, OSError) as err:
            show_warning(f"SAM-HQ: saved labels at {path} not opened: {err}")
            return
        self._add(image, array)
        show_info(f"SAM-HQ: opened the saved labels of '{image.name}' from {path}")

    def _add(self, image, data) -> napari.layers.Labels:
        ndim = len(spatial_shape(image))
        target = self.viewer.add_labels(
            data, name=C.LABELS_LAYER, scale=image.scale[-ndim:], translate=image.translate[-ndim:]
        )
        self._choose(C.LABELS_LAYER)
        layers = self.viewer.layers
        layers.selection.active = layers[C.POINTS_LAYER] if C.POINTS_LAYER in layers else target
        return target

    def target(self, image: napari.layers.Image) -> napari.layers.Labels:
        """The labels layer objects go to (checked against the image); created when missing,
        on disk when a dense array would exceed the threshold. ``ValueError`` names a layer
        that does not fit."""
        from ..engine.annotation.labels import dense_nbytes, open_labels_zarr

        name = self._chosen() or C.LABELS_LAYER
        layers = self.viewer.layers
        shape = spatial_shape(image)
        if name in layers and isinstance(layers[name], Labels):
            target = layers[name]
            if tuple(target.data.shape) != shape:
                raise ValueError(
                    f"labels layer '{name}' has shape {tuple(target.data.shape)}, the image {shape}: "
                    f"pick another labels layer or remove it so '{C.LABELS_LAYER}' is created"
                )
            return target
        if dense_nbytes(shape) > self._disk_gb() * 2**30:
            path = self.path(image)
            data = open_labels_zarr(path, shape)
            gb = dense_nbytes(shape) / 2**30
            show_info(f"SAM-HQ: '{C.LABELS_LAYER}' lives on disk at {path} ({gb:.1f} GB as a dense array)")
        else:
            data = np.zeros(shape, np.uint32)
        return self._add(image, data)

    def volume(self, target: napari.layers.Labels, image: napari.layers.Image | None = None) -> LayerLabels:
        """The bookkeeping (counter, extents, seeds) of a labels layer, bound once. A lazy
        (dask) layer is made writable first: into RAM when small, else into a zarr on disk
        next to ``image``'s labels."""
        with self._lock:
            bound = self._bindings.get(target.unique_id)
            if bound is not None and bound.array is target.data:
                return bound
        data = target.data
        if not isinstance(data, np.ndarray) and not type(data).__module__.startswith("zarr"):
            copy = self.writable_copy(image, target, suffix="")
            target.data = copy
            where = "loaded into RAM" if isinstance(copy, np.ndarray) else "copied to disk"
            show_info(f"SAM-HQ: '{target.name}' is read-only (lazy); it was {where} to be edited")
        bound = LayerLabels(target)
        with self._lock:
            self._bindings[target.unique_id] = bound
        return bound

    def writable_copy(self, image: napari.layers.Image | None, source: napari.layers.Labels, *,
                      suffix: str = " refined"):
        """A writable copy of ``source``'s data: in RAM below the on-disk threshold, else a
        zarr '<source><suffix>.labels.zarr' next to the image's labels, copied plane by plane
        (never the whole volume in RAM)."""
        from ..engine.annotation.labels import dense_nbytes, open_labels_zarr

        data = source.data
        shape = tuple(int(s) for s in data.shape)
        if dense_nbytes(shape, data.dtype) <= self._disk_gb() * 2**30 or image is None:
            return np.array(data)
        path = self.path(image).with_name(f"{source.name}{suffix}.labels.zarr")
        array = open_labels_zarr(path, shape, dtype=np.dtype(data.dtype) if data.dtype.kind == "u" else np.uint32)
        for i in range(shape[0]):
            array[i] = np.asarray(data[i])
        return array

    def forget(self, uid: Any) -> None:
        """A layer was removed: let go of its binding."""
        with self._lock:
            self._bindings.pop(uid, None)

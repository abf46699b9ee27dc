"""Adapters between napari layers and the engine: image data, the displayed plane, slice
keys, prompts, and Labels layers as ``LabelVolume`` s.

Frames: an image layer's data has spatial axes, then a colour axis when ``layer.rgb``;
a multiscale layer is segmented at its full resolution (level 0), whose pixels are the
layer's data coordinates. The *plane* is the two data axes the viewer displays (any two,
after Transpose or Roll: an ``Orientation``); the others are slicing axes and a *slice
key* is the tuple of their indices (``()`` for a 2D image). Prompt layers share the
image's data coordinates (the widget creates them with the image's scale and translate),
so a point lies on slice ``round(coords[slicing axes])`` at plane pixel
``(x, y) = (coords[column axis], coords[row axis])``.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.annotation.annotator import SlicePrompts
from ..engine.annotation.labels import LabelVolume
from ..engine.volumes.orientation import Orientation
from .constants import NEGATIVE

if TYPE_CHECKING:
    import napari

SliceKey = tuple[int, ...]
__all__ = ["LayerLabels", "SlicePrompts", "collect_prompts", "current_key", "image_data", "orientation_of"]


def image_data(layer: napari.layers.Image) -> Any:
    """The array to segment: the full-resolution level of a multiscale layer, else the data."""
    return layer.data[0] if layer.multiscale else layer.data


def spatial_shape(layer: napari.layers.Image) -> tuple[int, ...]:
    """Shape without the colour axis (full resolution): the shape of matching Labels layers."""
    shape = tuple(int(s) for s in image_data(layer).shape)
    return shape[:-1] if layer.rgb else shape


def orientation_of(viewer: napari.viewer.Viewer, layer: napari.layers.Image) -> Orientation | None:
    """The plane the viewer displays of ``layer`` (``None`` in 3D display or when a displayed
    axis is not one of the layer's)."""
    ndim = len(spatial_shape(layer))
    if viewer.dims.ndisplay != 2:
        return None
    offset = viewer.dims.ndim - ndim  # a layer with fewer axes is aligned to the last ones
    axes = tuple(int(a) - offset for a in viewer.dims.displayed)
    if any(not 0 <= a < ndim for a in axes):
        return None
    return Orientation(ndim, axes)


def current_key(viewer: napari.viewer.Viewer, layer: napari.layers.Image, orientation: Orientation) -> SliceKey:
    """The slice the viewer shows of ``layer`` (slicing-axis data indices, clipped)."""
    if not orientation.lead_axes:
        return ()
    ndim = len(spatial_shape(layer))
    world = np.asarray(viewer.dims.point)[-ndim:]
    data_point = np.asarray(layer.world_to_data(world))
    shape = spatial_shape(layer)
    return tuple(int(np.clip(np.round(data_point[a]), 0, shape[a] - 1)) for a in orientation.lead_axes)


def all_keys(shape: tuple[int, ...], orientation: Orientation) -> list[SliceKey]:
    lead = tuple(shape[a] for a in orientation.lead_axes)
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*lead)] if lead else [()]


def collect_prompts(
    points: napari.layers.Points | None,
    boxes: napari.layers.Shapes | None,
    orientation: Orientation,
    shape_hw: tuple[int, int],
) -> tuple[dict[SliceKey, SlicePrompts], list[str]]:
    """Prompts grouped by slice (plane pixels of ``orientation``), and warnings for prompts
    that cannot be used."""
    by_slice: dict[SliceKey, SlicePrompts] = defaultdict(SlicePrompts)
    warnings: list[str] = []
    h, w = shape_hw
    lead, (row, col) = orientation.lead_axes, orientation.plane_axes
    if points is not None and len(points.data):
        labels = points.features["label"].astype(str).to_numpy() if "label" in points.features else None
        for i, coord in enumerate(np.asarray(points.data)):
            key = tuple(int(round(coord[a])) for a in lead)
            y, x = float(coord[row]), float(coord[col])
            if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
                warnings.append(f"point at (x={x:.0f}, y={y:.0f}) is outside the image and was ignored")
                continue
            negative = labels is not None and labels[i] == NEGATIVE
            by_slice[key].points.append((x, y))
            by_slice[key].labels.append(0 if negative else 1)
    if boxes is not None:
        for verts, kind in zip(boxes.data, boxes.shape_type, strict=True):
            verts = np.asarray(verts)
            if kind != "rectangle":
                warnings.append(f"a {kind} in the boxes layer was ignored: only rectangles are boxes")
                continue
            key = tuple(int(round(verts[0, a])) for a in lead)
            ys, xs = verts[:, row], verts[:, col]
            box = (
                float(np.clip(xs.min(), 0, w - 1)),
                float(np.clip(ys.min(), 0, h - 1)),
                float(np.clip(xs.max(), 0, w - 1)),
                float(np.clip(ys.max(), 0, h - 1)),
            )
            if box[2] <= box[0] or box[3] <= box[1]:
                warnings.append("a box outside the image (or drawn in another plane) was ignored")
                continue
            by_slice[key].boxes.append(box)
    return dict(by_slice), warnings


class LayerLabels(LabelVolume):
    """A napari Labels layer as the annotator's labels.

    Our writes go to ``layer.data`` box by box (basic slicing: chunk by chunk on zarr) and
    are drawn once per step; their undo steps are compact (``LabelVolume``), not napari's
    per-pixel history. Painting with napari's tools stays in napari's history and keeps
    the counter and extents up to date. One timeline orders both, so **Undo** / **Redo** and
    Ctrl+Z / Ctrl+Shift+Z in the layer undo the last change whichever made it: undoing a
    commit keeps the strokes painted before and after it.
    """

    def __init__(self, layer: napari.layers.Labels) -> None:
        super().__init__(layer.data, history=True)
        self.layer = layer
        self._ours = 0
        self._drawn: list | None = []  # (box on screen, values) written since the last redraw
        self._timeline: list[str] = []  # "ours" or "napari", oldest first
        self._redo_timeline: list[str] = []
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)
        # the layer's own undo/redo (Ctrl+Z, Ctrl+Shift+Z and scripts call these) follow the
        # one timeline; napari's history is replayed through the originals
        self._napari_undo, self._napari_redo = layer.undo, layer.redo
        layer.undo, layer.redo = self.undo, self.redo

    def _store_region(self, region, new) -> None:
        self.layer.data[region] = new
        if self._drawn is not None:
            part = on_screen(self.layer, region, new)
            if part is False or len(self._drawn) >= 64:  # unknown view, or many boxes: redraw all
                self._drawn = None
            elif part is not None:
                self._drawn.append(part)

    def _redraw(self) -> None:
        """Show what was written since the last redraw: only its boxes on the plane on screen
        (napari's partial redraw of painting), else the whole layer again."""
        parts, self._drawn = self._drawn, []
        if parts is None or not redraw_boxes(self.layer, parts):
            self.layer.refresh()

    def _push_step(self, step: list) -> None:
        super()._push_step(step)
        self._timeline.append("ours")
        self._redo_timeline.clear()
        self._redraw()

    @contextmanager
    def transaction(self):
        self._ours += 1
        try:
            with super().transaction():
                yield
        finally:
            self._ours -= 1

    def undo(self) -> bool:
        """Undo the last change of the layer: ours (a commit, a propagation...) or a stroke."""
        if not self._timeline:
            self._napari_undo()  # strokes from before the binding
            return False
        return self._step(self._timeline, self._redo_timeline, super().undo, self._napari_undo)

    def redo(self) -> bool:
        if not self._redo_timeline:
            return False
        return self._step(self._redo_timeline, self._timeline, super().redo, self._napari_redo)

    def _step(self, source: list[str], target: list[str], ours, napari) -> bool:
        """Replay the newest change of ``source`` (ours or napari's) and move it to ``target``."""
        kind = source.pop()
        (ours if kind == "ours" else napari)()
        target.append(kind)
        if kind == "ours":
            self._redraw()
        else:
            self.layer.refresh()
        return True

    def _on_paint(self, event: Any) -> None:
        if self._ours:
            return
        self._timeline.append("napari")
        self._redo_timeline.clear()
        self._redo.clear()
        for atom in event.value:
            if hasattr(atom, "slice_key"):  # a masked paint step: a box and one label
                self.note_box(int(atom.new_value), atom.slice_key)
            else:
                indices, _, new = atom
                self.note_written(tuple(np.asarray(i) for i in indices), new)

    def _on_data(self, _event: Any = None) -> None:
        if self.layer.data is not self.array:  # replaced: the bookkeeping is not about it
            self.array = self.layer.data
            self.forget()
            self._timeline.clear()
            self._redo_timeline.clear()
            self._undo.clear()
            self._redo.clear()


def _internals(layer: napari.layers.Labels) -> napari.layers.Labels:
    """The layer itself behind napari's plugin proxy, for the partial redraw below.

    napari hands a plugin's widget its viewer behind ``PublicOnlyProxy``, whose private
    attributes warn on every access (napari 0.9: "Private attribute access ... is deprecated",
    a ``FutureWarning`` in the user's terminal on every commit) and may later be refused.
    The partial redraw needs napari's slice state and its colour mapping, which have no
    public form (napari's own painting uses them): it reads them from the layer itself, and
    every caller falls back to the public ``layer.refresh()`` where they are missing or
    changed (any exception; tested), so a napari that changes them is slower, never wrong.
    """
    return getattr(layer, "__wrapped__", layer)


def _plane_axes(layer: napari.layers.Labels):
    """``({non-displayed data axis: index on screen}, [the two displayed axes, display order])``,
    or ``None`` outside 2D display or where napari's slice state is not the known one."""
    layer = _internals(layer)
    try:
        here = layer._get_pt_not_disp()
        axes = [a for a in layer._slice.slice_input.order if a not in here]
    except Exception:  # noqa: BLE001 - another napari: the caller redraws the whole layer
        return None
    return (here, axes) if len(axes) == 2 else None


def on_screen(layer: napari.layers.Labels, region: tuple[slice, ...], values: np.ndarray):
    """The part of a box written into ``layer.data`` (``region`` in the data frame, its
    ``values``) that lies on the plane on screen: ``(box, plane values)`` in the layer's
    displayed slice (its axes in display order), ``None`` when the box is on another slice,
    ``False`` when that cannot be told (3D display, another napari): redraw the whole layer."""
    found = _plane_axes(layer)
    if found is None or len(region) != values.ndim:
        return False
    here, axes = found
    if any(not region[a].start <= here[a] < region[a].stop for a in here):
        return None
    part = values[tuple(here[a] - region[a].start if a in here else slice(None) for a in range(values.ndim))]
    if axes != sorted(axes):  # transposed view: the slice's axes follow the display order
        part = part.T
    return tuple(region[a] for a in axes), part  # a view: the box written is not changed after


def redraw_boxes(layer: napari.layers.Labels, parts: list) -> bool:
    """Draw boxes written into ``layer.data`` (``on_screen`` parts) without reading the plane
    again: the slice napari holds and its colour texture are updated in those boxes only, as
    napari's own painting does (``Labels.data_setitem``), so a commit on a 4096 x 4096 zarr
    plane redraws the object's box instead of decompressing and colouring 64 MB. Returns
    ``False`` (nothing drawn: refresh the layer) where that path does not apply (contours,
    an unloaded slice, another napari)."""
    if not parts:
        return True
    layer = _internals(layer)
    try:
        if layer.contour > 0 or layer.multiscale or not layer._slicing_state.loaded:
            return False
        image = layer._slice.image
        found = _plane_axes(layer)
        if found is None:
            return False
        here, axes = found
        for box, values in parts:
            _draw_box(layer, image, box, values)
            full = [slice(here[a], here[a] + 1) if a in here else None for a in range(layer.ndim)]
            for a, b in zip(axes, box, strict=True):
                full[a] = b
            layer._accumulate_updated_slice(tuple(full))
        layer._partial_labels_refresh()
    except Exception:  # noqa: BLE001 - another napari: the caller redraws the whole layer
        return False
    return True


def _draw_box(layer: napari.layers.Labels, image: Any, box: tuple[slice, ...], values: np.ndarray) -> None:
    """Put ``values`` into napari's slice (``raw``, and the colour texture ``view``) in ``box``.
    Only the pixels that changed are coloured: a commit changes pixels to one label, and
    colouring a whole 1024 x 1024 box costs napari's modulo ~40 ms (numpy) per write. ``raw``
    is a copy of the plane (zarr, dask), or a view of the data (numpy: already written)."""
    raw, view = image.raw[box], image.view[box]
    data = layer.data
    if raw.shape != values.shape or (isinstance(data, np.ndarray) and np.may_share_memory(raw, data)):
        changed = None  # numpy data: raw already holds the new values; nothing to compare with
    else:
        changed = raw != values
    if changed is None or changed.mean() > 0.5:
        image.raw[box] = values
        image.view[box] = layer.colormap._data_to_texture(values)
        return
    new = values[changed]
    if not new.size:
        return
    raw[changed] = new
    lo, hi = new.min(), new.max()
    if lo == hi:  # one label (commits, propagation, undo of one object): one colour
        view[changed] = layer.colormap._data_to_texture(np.array([lo], values.dtype))[0]
    else:
        view[changed] = layer.colormap._data_to_texture(new)

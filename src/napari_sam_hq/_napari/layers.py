"""Adapters between napari layers and the engine: planes, slice keys and prompts.

Frames: an image layer's data has ``L`` leading (slicing) axes, then Y and X, then a
colour axis when ``layer.rgb``. A *slice key* is the tuple of the ``L`` leading indices
(``()`` for a 2D image). Prompt layers share the image's data coordinates (the widget
creates them with the image's scale and translate), so a point ``(*lead, y, x)`` lies
on slice ``round(lead)`` at pixel ``(x, y)`` for the engine.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .constants import NEGATIVE

if TYPE_CHECKING:
    import napari

SliceKey = tuple[int, ...]


def leading_ndim(layer: napari.layers.Image) -> int:
    """Number of slicing axes in front of Y and X."""
    return layer.data.ndim - (3 if layer.rgb else 2)


def spatial_shape(layer: napari.layers.Image) -> tuple[int, ...]:
    """Shape without the colour axis: the shape of matching Labels layers."""
    return tuple(layer.data.shape[:-1] if layer.rgb else layer.data.shape)


def all_keys(layer: napari.layers.Image) -> list[SliceKey]:
    lead = layer.data.shape[: leading_ndim(layer)]
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*lead)] if lead else [()]


def current_key(viewer: napari.viewer.Viewer, layer: napari.layers.Image) -> SliceKey:
    """The slice the viewer shows of ``layer`` (leading data indices, clipped)."""
    n = leading_ndim(layer)
    if n == 0:
        return ()
    data_point = np.asarray(layer.world_to_data(viewer.dims.point))
    shape = layer.data.shape
    return tuple(int(np.clip(np.round(data_point[i]), 0, shape[i] - 1)) for i in range(n))


@dataclass
class SlicePrompts:
    """Prompts on one slice, in engine (x, y) pixels."""

    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    def objects(self) -> list[dict]:
        """One prompt dict per object (``predict`` keyword arguments).

        Rule: every box is an object, refined by the points inside it; the points inside
        no box form one more object (if any of them is positive).
        """
        pts = np.asarray(self.points, float).reshape(-1, 2)
        labels = np.asarray(self.labels, int)
        used = np.zeros(len(pts), bool)
        objects = []
        for box in self.boxes:
            x0, y0, x1, y1 = box
            inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
            used |= inside
            obj: dict = {"box": np.array(box)}
            if inside.any():
                obj.update(point_coords=pts[inside], point_labels=labels[inside])
            objects.append(obj)
        rest = ~used
        if rest.any() and (labels[rest] == 1).any():
            objects.append({"point_coords": pts[rest], "point_labels": labels[rest]})
        return objects


def collect_prompts(
    points: napari.layers.Points | None,
    boxes: napari.layers.Shapes | None,
    n_lead: int,
    shape_hw: tuple[int, int],
) -> tuple[dict[SliceKey, SlicePrompts], list[str]]:
    """Prompts grouped by slice, and warnings for prompts that cannot be used."""
    by_slice: dict[SliceKey, SlicePrompts] = defaultdict(SlicePrompts)
    warnings: list[str] = []
    h, w = shape_hw
    if points is not None and len(points.data):
        labels = points.features["label"].astype(str).to_numpy() if "label" in points.features else None
        for i, coord in enumerate(np.asarray(points.data)):
            key = tuple(int(round(c)) for c in coord[:n_lead])
            y, x = float(coord[n_lead]), float(coord[n_lead + 1])
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
            key = tuple(int(round(c)) for c in verts[0, :n_lead])
            ys, xs = verts[:, n_lead], verts[:, n_lead + 1]
            box = (
                float(np.clip(xs.min(), 0, w - 1)),
                float(np.clip(ys.min(), 0, h - 1)),
                float(np.clip(xs.max(), 0, w - 1)),
                float(np.clip(ys.max(), 0, h - 1)),
            )
            if box[2] <= box[0] or box[3] <= box[1]:
                warnings.append("a box outside the image was ignored")
                continue
            by_slice[key].boxes.append(box)
    return dict(by_slice), warnings

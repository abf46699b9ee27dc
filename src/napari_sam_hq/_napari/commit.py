"""Writing previewed and propagated objects into a Labels layer: one undo step each,
labels the user already has kept unless they ask to overwrite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .layers import SliceKey

if TYPE_CHECKING:
    import napari

# Per slice: (mask H x W bool, score, made of points only) for each object.
PreviewObjects = dict[SliceKey, list[tuple[np.ndarray, float, bool]]]


def write_objects(
    target: napari.layers.Labels, objects: PreviewObjects, *, overwrite: bool
) -> dict[int, list[SliceKey]]:
    """Write ``objects`` into ``target`` as new label ids; returns ``{id: slices written}``.

    One undo step (``block_history``). An object of points only is the same object on
    every slice (one id); every box is its own object. Without ``overwrite`` only pixels
    that are still 0 are written, so labels the user already has are never replaced.
    """
    next_id = int(target.data.max()) + 1
    point_object_id: int | None = None
    written: dict[int, list[SliceKey]] = {}
    with target.block_history():
        for key, slice_objects in sorted(objects.items()):
            for mask, _score, points_only in slice_objects:
                if points_only:
                    if point_object_id is None:
                        point_object_id, next_id = next_id, next_id + 1
                    label = point_object_id
                else:
                    label, next_id = next_id, next_id + 1
                region = np.asarray(target.data[key] if key else target.data)
                idx = np.nonzero(mask if overwrite else mask & (region == 0))
                if not idx[0].size:
                    continue
                target.data_setitem(tuple(np.full(idx[0].size, k) for k in key) + idx, label)
                written.setdefault(label, []).append(key)
    return written


def write_into(target: napari.layers.Labels, objects: PreviewObjects, label: int, *, overwrite: bool) -> list[SliceKey]:
    """Replace object ``label`` on each previewed slice by the union of that slice's masks
    (a correction); returns the slices written. One undo step; other labels are kept
    unless ``overwrite``."""
    if label <= 0:
        raise ValueError("pick a label id above 0 (the labels layer's selected label) to correct an object")
    written = []
    with target.block_history():
        for key, slice_objects in sorted(objects.items()):
            union = np.logical_or.reduce([m for m, _, _ in slice_objects])
            region = np.asarray(target.data[key] if key else target.data)
            allowed = union if overwrite else union & ((region == 0) | (region == label))
            new = np.where(region == label, 0, region)
            new[allowed] = label
            idx = np.nonzero(new != region)
            if idx[0].size:
                target.data_setitem(tuple(np.full(idx[0].size, k) for k in key) + idx, new[idx])
            written.append(key)
    return written


def apply_planes(target: napari.layers.Labels, prefix: SliceKey, planes: dict[int, np.ndarray]) -> int:
    """Set whole planes ``target.data[prefix + (i,)] = plane`` as one undo step; returns the
    number of pixels changed."""
    changed = 0
    with target.block_history():
        for i, plane in sorted(planes.items()):
            key = (*prefix, i)
            old = np.asarray(target.data[key])
            idx = np.nonzero(plane != old)
            if idx[0].size:
                target.data_setitem(tuple(np.full(idx[0].size, k) for k in key) + idx, plane[idx])
                changed += idx[0].size
    return changed


def add_labels(target: napari.layers.Labels, key: SliceKey, labels: np.ndarray, *, overwrite: bool) -> int:
    """Add the objects of ``labels`` (the shape of ``target.data[key]``) as new ids after the
    layer's largest, as one undo step; returns how many objects were written. Without
    ``overwrite`` they only fill pixels that are still 0."""
    labels = np.asarray(labels)
    offset = int(target.data.max())
    region = np.asarray(target.data[key] if key else target.data)
    if region.shape != labels.shape:
        raise ValueError(f"labels of shape {labels.shape} do not fit the layer's {region.shape}")
    todo = labels > 0
    if not overwrite:
        todo &= region == 0
    idx = np.nonzero(todo)
    if not idx[0].size:
        return 0
    values = labels[idx].astype(np.int64) + offset
    with target.block_history():
        target.data_setitem(tuple(np.full(idx[0].size, k) for k in key) + idx, values)
    return int(len(np.unique(values)))

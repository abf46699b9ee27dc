"""Writing previewed objects into a Labels layer: new ids, one undo step, existing labels kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .layers import SliceKey

if TYPE_CHECKING:
    import napari

# Per slice: (mask H x W bool, score, made of points only) for each object.
PreviewObjects = dict[SliceKey, list[tuple[np.ndarray, float, bool]]]


def write_objects(target: napari.layers.Labels, objects: PreviewObjects, *, overwrite: bool) -> list[int]:
    """Write ``objects`` into ``target`` as new label ids; returns the ids used.

    One undo step (``block_history``). An object of points only is the same object on
    every slice (one id); every box is its own object. Without ``overwrite`` only pixels
    that are still 0 are written, so labels the user already has are never replaced.
    """
    next_id = int(target.data.max()) + 1
    point_object_id: int | None = None
    written: list[int] = []
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
                if label not in written:
                    written.append(label)
    return written

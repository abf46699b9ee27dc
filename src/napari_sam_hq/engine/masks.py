"""Mask and label-image helpers shared by every part of the engine: the box of a plane mask,
the objects of a label image, compressed arrays (undo steps, packed propagation answers), and
the orientation-free name of a plane. numpy (and numcodecs, scipy) only; imports nothing
else of the engine, so any subpackage may use it."""

from __future__ import annotations

import numpy as np

SeedPlane = tuple[tuple[int, int], ...]  # ((axis, index), ...) fixing the non-displayed axes


def pack(array: np.ndarray) -> tuple[bytes, np.dtype, tuple[int, ...]]:
    """An undo step's array, compressed (masks and label values shrink 10-1000x; lz4 runs at
    GB/s), so a propagation of large objects does not keep hundreds of MB of history."""
    from numcodecs import Blosc

    array = np.ascontiguousarray(array)
    codec = Blosc(cname="lz4", clevel=1, shuffle=Blosc.BITSHUFFLE if array.dtype == bool else Blosc.SHUFFLE)
    return codec.encode(array), array.dtype, array.shape


def unpack(packed: tuple[bytes, np.dtype, tuple[int, ...]]) -> np.ndarray:
    from numcodecs import Blosc

    data, dtype, shape = packed
    return np.frombuffer(Blosc().decode(data), dtype=dtype).reshape(shape)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, x0, y1, x1)`` half-open box of a plane mask, ``None`` when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


# ``ndimage.find_objects`` lists every id up to the largest: beyond this, ids are compacted first
_DENSE_IDS = 1_000_000


def object_slices(labels: np.ndarray) -> list[tuple[int, tuple[slice, ...]]]:
    """``(id, bounding slices)`` of every id above 0 of an integer label image, ids ascending.
    Sparse or huge ids (hashes, 64-bit ids from other tools) are compacted first, so the cost
    follows the number of objects, not the largest id."""
    from scipy import ndimage

    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    if top <= 0:
        return []
    if top <= _DENSE_IDS:
        return [(i, sl) for i, sl in enumerate(ndimage.find_objects(labels), start=1) if sl is not None]
    ids, inverse = np.unique(np.where(labels > 0, labels, 0), return_inverse=True)
    compact = inverse.reshape(labels.shape)
    if ids[0] != 0:  # no background pixel: every id is an object
        ids, compact = np.concatenate([[0], ids]), compact + 1
    return [(int(ids[i]), sl) for i, sl in enumerate(ndimage.find_objects(compact), start=1) if sl is not None]

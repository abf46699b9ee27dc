"""Labels per plane, renumbered and linked through a stack: what every mode of segment
everything shares (``relabel_raster``: ids in raster order; ``link_slices``: per-slice
labels joined into 3D objects by overlap; ``iter_linked_planes``: a mode's planes, slice by
slice, then linked). numpy only."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np


def relabel_raster(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N in raster order of each object's first pixel (0 stays 0)."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    order = [int(i) for _, i in sorted(zip(first, ids, strict=True)) if i != 0]
    lut = np.zeros(int(flat.max()) + 1 if flat.size else 1, np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[labels]


def iter_linked_planes(
    session: Any,
    keys: list | None,
    plane: Callable[[tuple], Generator[tuple[float, str], None, np.ndarray]],
    *,
    link_iou: float = 0.5,
) -> Generator[tuple[float, str], None, np.ndarray]:
    """Labels of ``keys`` of a session (default: every slice) by ``plane(key)``, a step
    generator yielding ``(fraction, message)`` and returning ``H x W`` labels: ``H x W`` for
    a plane (``keys`` = ``[()]``), else ``len(keys) x H x W`` linked along the first leading
    axis (``link_slices``). Messages name the slice."""
    keys = session.keys if keys is None else [session.check_key(k) for k in keys]
    planes = []
    for i, key in enumerate(keys):
        where = f"slice {key}: " if key else ""
        gen = plane(key)
        while True:
            try:
                fraction, message = next(gen)
            except StopIteration as stop:
                planes.append(stop.value)
                break
            yield (i + fraction) / len(keys), where + message
    if keys == [()]:
        return planes[0]
    return link_slices(planes, iou_threshold=link_iou)


def link_slices(planes: list[np.ndarray], *, iou_threshold: float = 0.5) -> np.ndarray:
    """Join per-slice labels (``N`` planes ``H x W``) into ``N x H x W`` labels with 3D ids.

    Rule: an object on slice z takes the id of the object on slice z - 1 it overlaps most by
    IoU, when that IoU is at least ``iou_threshold``; each object of z - 1 is taken at most
    once (pairs matched greedily by decreasing IoU). Otherwise it starts a new id. Objects
    are linked only to the adjacent slice. Ids are then renumbered in raster order.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    out = np.zeros((len(planes), *planes[0].shape), np.int64)
    next_id = 1
    for z, plane in enumerate(planes):
        plane = np.asarray(plane, np.int64)
        ids = [int(i) for i in np.unique(plane) if i != 0]
        mapping: dict[int, int] = {}
        if z > 0 and ids:
            prev = out[z - 1]
            pairs = _overlaps(prev, plane)
            taken_prev: set[int] = set()
            for iou, a, b in sorted(pairs, reverse=True):
                if iou < iou_threshold or a in taken_prev or b in mapping:
                    continue
                mapping[b] = a
                taken_prev.add(a)
        for b in ids:
            if b not in mapping:
                mapping[b] = next_id
                next_id += 1
        lut = np.zeros(plane.max() + 1, np.int64)
        for b, a in mapping.items():
            lut[b] = a
        out[z] = lut[plane]
        next_id = max(next_id, int(out[z].max()) + 1)
    return relabel_raster(out).astype(np.uint32)


def _overlaps(a: np.ndarray, b: np.ndarray) -> list[tuple[float, int, int]]:
    """(IoU, id in a, id in b) for every pair of objects that overlap."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a = dict(zip(*np.unique(a[a > 0], return_counts=True), strict=True))
    area_b = dict(zip(*np.unique(b[b > 0], return_counts=True), strict=True))
    out = []
    for (ia, ib), inter in zip(pairs.T, counts, strict=True):
        union = area_a[ia] + area_b[ib] - inter
        out.append((float(inter / union), int(ia), int(ib)))
    return out

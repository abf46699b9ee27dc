"""Refine label images a user already has (Cellpose, StarDist, a threshold) with SAM-HQ.

Every object of every plane is segmented again, prompted with what the old labels say of
it: its bounding box, one interior point (the pixel farthest from its border) and its own
mask as the decoder's mask input (``prompts.mask_to_logits``, the same form the adapted
models are trained with). Objects of a plane are decoded in batches through the session,
so stored embeddings, tiles (an object goes to the tile that holds it) and stacks (one
plane at a time, never the whole volume) work as everywhere else. Ids are kept.

Safeguards, per object: an empty answer, or one that overlaps the old mask by less than
``RefineSettings.min_iou`` (SAM-HQ jumped to another structure or the background), keeps
the old mask; objects smaller than ``min_area`` are kept as they are. Where refined masks
overlap, a pixel stays with the object that had it; otherwise the smaller object takes it
(a large mask never swallows a small neighbour). Pixels of kept objects are never taken.

Frames: slice keys index the session's leading axes; planes are ``H x W`` (rows y,
columns x); boxes XYXY and points (x, y) in plane pixels; ``RefinedPlane.box`` is
``(y0, x0, y1, x1)`` half-open.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..masks import mask_box, object_slices, pack, unpack
from ..volumes.session import SegmentationSession, SliceKey, plane_of
from .prompts import RefineSettings, object_prompts

_ANSWER_BYTES = 64 * 2**20  # full-plane bool answers per decoder batch (4 at 4096 x 4096)

KEPT_EMPTY = "kept: empty answer"
KEPT_CHANGED = "kept: changed too much"
KEPT_SMALL = "kept: too small"
REFINED = "refined"


@dataclass(frozen=True)
class RefinedPlane:
    """The refined labels of one plane, inside ``box`` (``(y0, x0, y1, x1)``, the box of every
    pixel that changed), compressed: ``values()`` gives the ``(y1 - y0) x (x1 - x0)`` crop."""

    key: SliceKey
    box: tuple[int, int, int, int]
    packed: tuple

    def values(self) -> np.ndarray:
        return unpack(self.packed)


@dataclass(frozen=True)
class ObjectChange:
    """One object on one plane: pixels before and after, the IoU of the old mask with
    SAM-HQ's answer, and what was done (``REFINED`` or why the old mask was kept)."""

    label: int
    key: SliceKey
    area_before: int
    area_after: int
    iou: float
    status: str


@dataclass
class RefineResult:
    """The changed planes and one ``ObjectChange`` per object and plane."""

    planes: list[RefinedPlane]
    changes: list[ObjectChange]

    def table(self):
        """The changes as a pandas DataFrame: ``label``, the slice (``slice`` for one leading
        axis, ``slice-0``... for more, none for 2D), ``area_before``, ``area_after``,
        ``iou``, ``status``."""
        import pandas as pd

        rows = []
        for c in self.changes:
            row: dict[str, Any] = {"label": c.label}
            if len(c.key) == 1:
                row["slice"] = c.key[0]
            else:
                row.update({f"slice-{i}": k for i, k in enumerate(c.key)})
            row.update(area_before=c.area_before, area_after=c.area_after, iou=c.iou, status=c.status)
            rows.append(row)
        columns = ["label", "area_before", "area_after", "iou", "status"]
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)

    def write(self, out: Any) -> None:
        """Write the refined planes into ``out`` (an array of the labels' shape: numpy or
        zarr; the old labels themselves to replace them), plane box by plane box."""
        for plane in self.planes:
            y0, x0, y1, x1 = plane.box
            out[(*plane.key, slice(y0, y1), slice(x0, x1))] = plane.values()


def refine_plane(session: SegmentationSession, key: SliceKey, plane: np.ndarray,
                 settings: RefineSettings) -> tuple[RefinedPlane | None, list[ObjectChange]]:
    """Refine the objects of one ``H x W`` label ``plane`` of slice ``key`` (module notes)."""
    plane = np.asarray(plane)
    todo, changes = [], []
    for label, sl in object_slices(plane):
        mask = plane[sl] == label
        area = int(mask.sum())
        if area < settings.min_area:
            changes.append(ObjectChange(label, key, area, area, 1.0, KEPT_SMALL))
        else:
            todo.append((label, sl, mask, area))
    accepted: list[tuple[int, tuple[slice, slice], np.ndarray]] = []  # label, box, new mask crop
    # the session answers with full-plane masks: at most _ANSWER_BYTES of them at once
    step = max(1, min(settings.batch, _ANSWER_BYTES // plane.size))
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        objects = [object_prompts(m, (sl[0].start, sl[1].start), session.grid, settings)
                   for _, sl, m, _ in chunk]
        answers = session.segment(key, objects, hq_token_only=settings.hq_token_only)
        for (label, sl, old, area), answer in zip(chunk, answers, strict=True):
            found = mask_box(answer.mask)
            if found is None:
                changes.append(ObjectChange(label, key, area, area, 0.0, KEPT_EMPTY))
                continue
            box = (slice(found[0], found[2]), slice(found[1], found[3]))
            crop = answer.mask[box]
            inter = int(crop[_overlap(box, sl, old)].sum()) if _meets(box, sl) else 0
            iou = inter / (area + int(crop.sum()) - inter)
            if iou < settings.min_iou:
                changes.append(ObjectChange(label, key, area, area, iou, KEPT_CHANGED))
                continue
            accepted.append((label, box, np.ascontiguousarray(crop)))
            changes.append(ObjectChange(label, key, area, -1, iou, REFINED))  # area after: below
    if not accepted:
        return None, changes
    out, box = _assemble(plane, accepted)
    region = out[box[0] : box[2], box[1] : box[3]]
    # the areas after: only pixels inside the changed box changed
    gained = _gains(plane[box[0] : box[2], box[1] : box[3]], region)
    changes = [dataclasses.replace(c, area_after=c.area_before + gained.get(c.label, 0))
               if c.status == REFINED else c for c in changes]
    return (RefinedPlane(key, box, pack(region)) if region.size else None), changes


def _gains(before: np.ndarray, after: np.ndarray) -> dict[int, int]:
    """Pixels each label gained (negative: lost) from ``before`` to ``after``."""
    out: dict[int, int] = {}
    for labels, sign in ((after, 1), (before, -1)):
        ids, counts = np.unique(labels, return_counts=True)
        for i, n in zip(ids.tolist(), counts.tolist(), strict=True):
            out[i] = out.get(i, 0) + sign * n
    return out


def _meets(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    return all(max(p.start, q.start) < min(p.stop, q.stop) for p, q in zip(a, b, strict=True))


def _overlap(new_box: tuple[slice, slice], old_box: tuple[slice, slice], old: np.ndarray) -> np.ndarray:
    """The old mask (a crop at ``old_box``) in the frame of the crop at ``new_box``."""
    out = np.zeros(tuple(s.stop - s.start for s in new_box), bool)
    y0, y1 = max(new_box[0].start, old_box[0].start), min(new_box[0].stop, old_box[0].stop)
    x0, x1 = max(new_box[1].start, old_box[1].start), min(new_box[1].stop, old_box[1].stop)
    out[y0 - new_box[0].start : y1 - new_box[0].start, x0 - new_box[1].start : x1 - new_box[1].start] = \
        old[y0 - old_box[0].start : y1 - old_box[0].start, x0 - old_box[1].start : x1 - old_box[1].start]
    return out


def _assemble(plane: np.ndarray, accepted) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The plane with the accepted objects replaced by their new masks (module notes: the old
    owner keeps a disputed pixel, else the smaller object; kept objects are never touched),
    and the box of the pixels that changed (``(0, 0, 0, 0)`` when none did)."""
    out = plane.copy()
    refined_old = np.isin(plane, [label for label, _, _ in accepted])
    kept = (plane != 0) & ~refined_old
    out[refined_old] = 0
    # larger first, so the smaller objects painted later win the pixels they share ...
    for label, box, crop in sorted(accepted, key=lambda a: -int(a[2].sum())):
        out[box][crop & ~kept[box]] = label
    # ... except pixels an object had and still claims: they go back to it
    for label, box, crop in accepted:
        out[box][crop & (plane[box] == label)] = label
    return out, mask_box(out != plane) or (0, 0, 0, 0)


def iter_refine(
    session: SegmentationSession,
    labels: Any,
    keys: Iterable[SliceKey] | None = None,
    settings: RefineSettings | None = None,
) -> Generator[tuple[float, str], None, RefineResult]:
    """Refine every object of ``labels`` (an array of the session's ``(*lead, H, W)`` shape,
    read one plane at a time: numpy, zarr, dask, an oriented view) on ``keys`` (default: every
    slice). Yields ``(fraction, message)`` after each plane; returns a ``RefineResult``
    (nothing is written: ``result.write(out)``). Planes without objects cost one read."""
    settings = settings or RefineSettings()
    keys = session.check_labels(labels, keys)
    planes, changes = [], []
    for n, key in enumerate(keys, start=1):
        plane = plane_of(labels, key)
        if plane.any():
            refined, found = refine_plane(session, key, plane, settings)
            changes += found
            if refined is not None:
                planes.append(refined)
        done = sum(c.status == REFINED for c in changes)
        where = f"slice {key[0] if len(key) == 1 else key}: " if key else ""
        yield n / len(keys), f"{where}{done} of {len(changes)} object(s) refined"
    return RefineResult(planes, changes)

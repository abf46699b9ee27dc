"""Propagation through a stack: from objects segmented on some slices to the slices around them.

Frames: slices are indexed along one leading axis of a ``SegmentationSession`` (``axis``,
0 = the first leading axis; the other leading indices stay at ``base_key``). Labels are
``N x H x W`` planes along that axis; masks are ``H x W`` bool plane pixels.

Rule, per object (one label id):
- Its *seed slices* are the slices where it is given (by default every slice where the
  id has pixels). From the lowest seed it goes down and from the highest it goes up (unless
  ``outward`` is off: then only between seeds). Between two seeds it fills from both ends
  towards the middle: the lower walks up to the slice below the middle, the upper down to the
  slice above it, and the middle slice is prompted from both neighbours (``fill between``).
- Each step prompts the next slice with the previous mask, as ``PropagationSettings.prompt``
  says: ``point`` (its most interior pixel as a positive point: the default, after
  micro-sam's measurement on an EM volume, where a single interior point held best and box +
  mask + points was the weakest; docs/volumes.md), ``points`` (three interior points spread
  along the object), ``box`` (its bounding box), ``mask`` (its low-res logits as
  ``mask_input`` when both slices are answered from the same tile), or combinations joined by
  ``+`` (``box+point+mask`` was the only recipe before). The middle slice of a fill gets the
  points of both neighbours, the box around both, and one neighbour's mask.
- It stops where the object ends: the new mask has fewer than ``min_area`` pixels, its
  predicted IoU is below ``score_threshold``, or its IoU with the previous slice's mask is
  below ``iou_threshold``; or at a *stop point*: a point given on a slice that falls inside
  the object's new mask there (a negative point a user puts where the object should end).
  The stopping slice is not written.
- All objects advance together; on each slice, all of them are decoded in one batch.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy import ndimage

from . import memory
from .session import ObjectMask, SegmentationSession, SliceKey

# Decoder-ready tiles a propagation keeps: each slice's tiles are decoded once or twice (the
# first tile, then another that holds a cut mask whole) and never again, so one is enough
# (18 MB for vit_tiny; two are alive while the next is encoded); one asked for again comes
# back from the store.
PROPAGATION_READY_TILES = 1


PROMPT_PARTS = ("point", "points", "box", "mask")
PROMPT_KINDS = ("point", "points", "box", "box+point", "point+mask", "points+mask", "box+mask", "box+point+mask",
                "box+points", "box+points+mask")


@dataclass(frozen=True)
class PropagationSettings:
    """How each slice is prompted (``prompt``: ``PROMPT_KINDS``) and when to stop (see the
    module rule). Thresholds measured on synthetic volumes (docs/volumes.md)."""

    score_threshold: float = 0.5
    iou_threshold: float = 0.3
    min_area: int = 10
    max_slices: int | None = None  # per direction; None: to the end of the stack
    prompt: str = "point"

    @property
    def parts(self) -> frozenset[str]:
        return frozenset(self.prompt.split("+"))

    def __post_init__(self) -> None:
        parts = self.prompt.split("+")
        if not parts or set(parts) - set(PROMPT_PARTS) or len(set(parts)) != len(parts):
            raise ValueError(f"prompt must be parts of {', '.join(PROMPT_PARTS)} joined by '+' (e.g. 'box+point'), "
                             f"got {self.prompt!r}")
        if set(parts) <= {"mask"}:
            raise ValueError("a mask alone does not say where the object is: add a point, points or a box "
                             "(e.g. 'point+mask')")
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be at least 1 pixel, got {self.min_area}")
        if self.max_slices is not None and self.max_slices < 1:
            raise ValueError(f"max_slices must be at least 1 (or None), got {self.max_slices}")


@dataclass
class _Track:
    """One object walking in one direction from a seed."""

    label: int
    seed: int
    step: int  # +1 or -1
    stop: int  # last slice it may reach (inclusive)
    position: int
    prev: ObjectMask
    pair: tuple[int, int, int] | None = None  # the fill (label, a, b) it is one end of


# The interior point is searched on at most this many pixels: a mask the size of a 2048 x 2048
# plane would otherwise cost the distance transform ~200 MB of temporaries (int32 feature
# transform, float64 distances) and ~0.3 s per propagation step.
INTERIOR_SEARCH_PIXELS = 1 << 20


def prompt_from_mask(mask: np.ndarray) -> dict:
    """Box (XYXY) and the most interior pixel (ties: nearest the centroid) as a positive point,
    from an ``H x W`` mask.

    A box of more than ``INTERIOR_SEARCH_PIXELS`` pixels is searched on every s-th row and
    column (s the smallest stride that fits): the point is still a pixel of the mask, at most
    about s pixels from the deepest one, and the search's memory stays bounded."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    crop = mask[y0 : y1 + 1, x0 : x1 + 1]
    stride = max(1, int(np.ceil(np.sqrt(crop.size / INTERIOR_SEARCH_PIXELS))))
    if stride > 1 and crop[::stride, ::stride].any():
        crop = crop[::stride, ::stride]
    else:
        stride = 1
    padded = np.pad(crop, 1)
    dist = ndimage.distance_transform_edt(padded)
    ys, xs = np.nonzero(dist == dist.max())  # of equally deep pixels, the one nearest the centroid
    del dist
    count = np.count_nonzero(crop)  # the centroid from row and column sums (no index arrays)
    cy = crop.sum(axis=1) @ np.arange(crop.shape[0]) / count + 1
    cx = crop.sum(axis=0) @ np.arange(crop.shape[1]) / count + 1
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    y, x = (ys[i] - 1) * stride, (xs[i] - 1) * stride
    return {
        "box": np.array([x0, y0, x1, y1], float),
        "point_coords": np.array([[x0 + x, y0 + y]], float),
        "point_labels": np.array([1]),
    }


def points_from_mask(mask: np.ndarray, n: int = 3, *, first: np.ndarray | None = None) -> np.ndarray:
    """``n x 2`` (x, y) positive points inside an ``H x W`` mask: its most interior pixel
    (``first``, when the caller has it from ``prompt_from_mask``), then the two pixels of its
    deeper half farthest apart along its long axis (the object's two ends, well inside it), so
    the points span the object as a user's clicks would."""
    if first is None:
        first = prompt_from_mask(mask)["point_coords"][0]
    if n == 1:
        return first[None]
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    y0, x0 = rows[0], cols[0]
    crop = mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1]
    stride = max(1, int(np.ceil(np.sqrt(crop.size / INTERIOR_SEARCH_PIXELS))))
    small = crop[::stride, ::stride] if crop[::stride, ::stride].any() else crop
    stride = stride if small is not crop else 1
    dist = ndimage.distance_transform_edt(np.pad(small, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= 0.5 * dist.max())
    pts = np.stack([xs, ys], 1).astype(float) * stride + [x0, y0]
    if len(pts) < 3:
        return first[None]
    centred = pts - pts.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]  # the long axis
    along = centred @ axis
    ends = [pts[int(np.argmin(along))], pts[int(np.argmax(along))]]
    return np.array([first, *ends[: n - 1]], float)


def step_prompt(masks: list[ObjectMask], parts: frozenset[str]) -> dict:
    """The prompt of the next slice from the mask(s) next to it (one, or both neighbours of a
    fill's middle slice): ``parts`` of ``point``, ``points``, ``box``, ``mask``."""
    obj: dict = {}
    pts, boxes = [], []
    for m in masks:
        mask = m.mask  # once: a packed mask unpacks on every access
        found = prompt_from_mask(mask)  # box and interior point: one distance transform
        boxes.append(found["box"])
        if "points" in parts:
            pts.append(points_from_mask(mask, first=found["point_coords"][0]))
        elif "point" in parts:
            pts.append(found["point_coords"])
    if pts:
        coords = np.concatenate(pts)
        obj.update(point_coords=coords, point_labels=np.ones(len(coords), np.int64))
    if "box" in parts:
        boxes = np.array(boxes)
        obj["box"] = np.array([*boxes[:, :2].min(0), *boxes[:, 2:].max(0)], float)
    if "mask" in parts:
        for m in masks:
            if m.tile is not None:
                obj.update(mask_input=m.low_res_logits, tile=m.tile)
                break
    return obj


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def iter_propagate(
    session: SegmentationSession,
    seeds: dict[int, dict[int, np.ndarray]],
    *,
    axis: int = 0,
    base_key: SliceKey | None = None,
    settings: PropagationSettings | None = None,
    outward: bool = True,
    stops: dict[int, list[tuple[float, float]]] | None = None,
) -> Generator[tuple[float, str], None, dict[int, dict[int, ObjectMask]]]:
    """Propagate every object of ``seeds`` (``{label: {slice: H x W mask}}``) along ``axis``.

    ``outward``: beyond the lowest and highest seeds too (off: only between seeds, a fill).
    ``stops``: ``{slice: [(x, y), ...]}`` plane pixels where objects end (module rule).
    Yields ``(fraction, message)`` after each slice; returns ``{slice: {label: mask}}``
    (``PackedObjectMask``: an ``ObjectMask`` kept in its box, compressed) for the slices it
    reached, seeds excluded. Slices are encoded when the store lacks them.
    """
    settings = settings or PropagationSettings()
    n_lead = len(session.lead_shape)
    if not n_lead:
        raise ValueError("propagation needs a stack: this image has no slicing axis")
    if not 0 <= axis < n_lead:
        raise ValueError(f"axis {axis} is not a slicing axis of a stack with leading shape {session.lead_shape}")
    base = list(base_key if base_key is not None else (0,) * n_lead)
    length = session.lead_shape[axis]
    parts = settings.parts
    stops = {int(z): [(float(x), float(y)) for x, y in pts] for z, pts in (stops or {}).items()}

    def key_at(i: int) -> SliceKey:
        k = list(base)
        k[axis] = i
        return tuple(k)

    def start(mask: np.ndarray) -> ObjectMask:
        return ObjectMask(np.asarray(mask, bool), 1.0, np.zeros((256, 256), np.float32), tile=None)  # type: ignore[arg-type]

    limit = settings.max_slices or length
    tracks: list[_Track] = []
    # a fill between two seeds a < b: its middle slice, and the last mask each end reached
    # (None once that end stopped short: the object ended on its way)
    middles: dict[tuple[int, int, int], dict] = {}
    for label, planes in seeds.items():
        planes = {int(i): m for i, m in planes.items() if np.asarray(m).sum() >= settings.min_area}
        if not planes:
            continue
        order = sorted(planes)
        bounds = []
        if outward:
            bounds += [(order[0], -1, max(0, order[0] - limit), None),
                       (order[-1], +1, min(length - 1, order[-1] + limit), None)]
        for a, b in pairwise(order):
            if b - a < 2:
                continue
            m = (a + b) // 2
            if b - a - 1 > 2 * limit:  # max_slices each way does not reach the middle: no fill there
                bounds += [(a, +1, a + limit, None), (b, -1, b - limit, None)]
                continue
            pair = (int(label), a, b)
            middles[pair] = {"slice": m, "ends": {+1: start(planes[a]), -1: start(planes[b])}}
            bounds += [(a, +1, m - 1, pair), (b, -1, m + 1, pair)]
        for seed, step, stop, pair in bounds:
            if (stop - seed) * step <= 0:
                continue
            tracks.append(_Track(int(label), seed, step, stop, seed, start(planes[seed]), pair))

    seed_slices = {label: set(int(i) for i in planes) for label, planes in seeds.items()}
    found: dict[int, dict[int, ObjectMask]] = {}
    distance: dict[tuple[int, int], int] = {}
    total = max(1, sum(abs(t.stop - t.seed) for t in tracks) + len(middles))
    done = 0

    def ended(res, neighbours: list[ObjectMask], z: int) -> bool:
        if res.mask.sum() < settings.min_area or res.score < settings.score_threshold:
            return True
        if max(_iou(res.mask, n.mask) for n in neighbours) < settings.iou_threshold:
            return True
        h, w = res.mask.shape
        return any(res.mask[min(h - 1, max(0, round(y))), min(w - 1, max(0, round(x)))] for x, y in stops.get(z, ()))

    def keep(label: int, z: int, res, d: int) -> None:
        if z in seed_slices[label]:
            return
        best = distance.get((label, z))
        if best is None or d < best:
            distance[(label, z)] = d
            found.setdefault(z, {})[label] = res.packed()  # KBs, not a plane each

    with session.ready_at_most(PROPAGATION_READY_TILES):  # its tiles are used once or twice each
        while tracks:
            by_slice: dict[int, list[_Track]] = {}
            for t in tracks:
                by_slice.setdefault(t.position + t.step, []).append(t)
            alive: list[_Track] = []
            for z, group in sorted(by_slice.items()):
                objects = [step_prompt([t.prev], parts) for t in group]
                # only the tiles it decodes from are read (a few chunks of a lazy slice)
                results = session.segment(key_at(z), objects, lookup=session.region_lookup(key_at(z)))
                for t, res in zip(group, results, strict=True):
                    done += 1
                    t.position = z
                    if ended(res, [t.prev], z):
                        done += abs(t.stop - z)
                        if t.pair is not None:
                            middles[t.pair]["ends"][t.step] = None
                        continue
                    keep(t.label, z, res, abs(z - t.seed))
                    t.prev = res
                    if t.pair is not None:
                        middles[t.pair]["ends"][t.step] = res
                    if z == t.stop:
                        continue
                    alive.append(t)
                yield min(done / total, 1.0), f"slice {z}: {len(group)} object(s)"
            tracks = alive
        # the middle of each fill, prompted from both neighbours (those that reached it)
        by_middle: dict[int, list[tuple[tuple[int, int, int], list[ObjectMask]]]] = {}
        for pair, info in middles.items():
            near = [m for m in info["ends"].values() if m is not None]
            done += 1
            if near:
                by_middle.setdefault(info["slice"], []).append((pair, near))
        for z, group in sorted(by_middle.items()):
            results = session.segment(key_at(z), [step_prompt(near, parts) for _, near in group],
                                      lookup=session.region_lookup(key_at(z)))
            for ((label, a, b), near), res in zip(group, results, strict=True):
                if not ended(res, near, z):
                    keep(label, z, res, min(z - a, b - z))
            yield min(done / total, 1.0), f"slice {z}: {len(group)} object(s), met in the middle"
    memory.trim()  # the encoder's and decoder's temporaries back to the system
    return found


def seeds_from_labels(labels: np.ndarray, ids: list[int] | None = None, *, slices: dict[int, set[int]] | None = None):
    """``{label: {slice: mask}}`` from ``N x H x W`` labels; ``slices`` limits each id's seeds
    (e.g. to the slices a user committed), default every slice where the id occurs."""
    labels = np.asarray(labels)
    present = {int(i) for i in np.unique(labels) if i != 0} if ids is None else {int(i) for i in ids}
    seeds: dict[int, dict[int, np.ndarray]] = {label: {} for label in present}
    for z in range(labels.shape[0]):
        plane = labels[z]
        for label in present:
            if slices is not None and label in slices and z not in slices[label]:
                continue
            mask = plane == label
            if mask.any():
                seeds[label][z] = mask
    return {label: planes for label, planes in seeds.items() if planes}


def write_propagation(
    labels: np.ndarray,
    found: dict[int, dict[int, ObjectMask]],
    *,
    overwrite: bool = False,
    seeds: dict[int, set[int]] | None = None,
) -> dict[int, np.ndarray]:
    """The new planes of ``N x H x W`` ``labels`` after writing ``found``: ``{slice: H x W}``
    for the slices that change (``labels`` itself is not modified; nothing is copied whole).

    ``seeds`` (``{label: seed slices}``): each such object's pixels outside its seed slices
    are cleared first, so re-propagating after a correction replaces the old propagation
    instead of mixing with it. Without ``overwrite`` only pixels that are 0 (or the
    object's own) are written; among new masks on one slice the higher score wins.
    """
    planes: dict[int, np.ndarray] = {}

    def plane(z: int) -> np.ndarray:
        if z not in planes:
            planes[z] = np.array(labels[z], copy=True)
        return planes[z]

    for label, keep in (seeds or {}).items():
        for z in range(labels.shape[0]):
            if z not in keep and (np.asarray(labels[z]) == label).any():
                p = plane(z)
                p[p == label] = 0
    for z, objects in found.items():
        p = plane(z)
        claimed = np.zeros(p.shape, bool)
        for label, res in sorted(objects.items(), key=lambda kv: -kv[1].score):
            free = res.mask & ~claimed
            if not overwrite:
                free &= (p == 0) | (p == label)
            p[free] = label
            claimed |= res.mask
    return {z: p for z, p in planes.items() if not np.array_equal(p, labels[z])}

"""Linking per-frame objects into tracks with divisions, by laptrack (Jaqaman et al. 2008's LAP
tracker; it handles splits and gap closing; a linking library made for cells, kept by its
author and used by napari plugins).

Frames: a movie is ``T x Y x X`` (or ``T x Z x Y x X``); per-frame labels have its shape, ids
free per frame. Objects are linked by their centroids (pixels, data order): to the nearest
object of the next frame within ``max_distance``, across up to ``max_gap`` missing frames,
and a division links a track's first object to an object of the frame before (its parent)
within ``division_distance``. The result, ``Tracks``, holds per (frame, label) its track id
and per track its parent; a division is a parent with two daughters.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrackSettings:
    """``max_distance``: how far (pixels) an object may move between frames; ``max_gap``:
    frames an object may be missing and keep its track; ``division_distance``: how far a
    daughter's centroid may be from its parent's (0: no divisions)."""

    max_distance: float = 15.0
    max_gap: int = 2
    division_distance: float = 15.0

    def __post_init__(self) -> None:
        problems = []
        if not self.max_distance > 0:
            problems.append(f"max_distance must be positive, got {self.max_distance}")
        if self.max_gap < 0:
            problems.append(f"max_gap must not be negative, got {self.max_gap}")
        if self.division_distance < 0:
            problems.append(f"division_distance must not be negative (0: no divisions), got {self.division_distance}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Tracks:
    """The linking's answer. ``ids``: ``{(frame, label in that frame): track id}`` (ids from 1);
    ``parents``: ``{track id: parent track id}`` (divisions, and gaps closed across a parent
    change never happen: a gap keeps the track's id); ``spans``: ``{track id: (first frame,
    last frame)}``; ``centroids``: ``{(frame, label): centroid}`` in data order."""

    ids: dict[tuple[int, int], int]
    parents: dict[int, int]
    spans: dict[int, tuple[int, int]]
    centroids: dict[tuple[int, int], tuple[float, ...]] = field(default_factory=dict)

    def children(self, track: int) -> list[int]:
        return sorted(c for c, p in self.parents.items() if p == track)

    @property
    def divisions(self) -> dict[int, list[int]]:
        """``{parent: [daughters]}``."""
        out: dict[int, list[int]] = {}
        for c, p in self.parents.items():
            out.setdefault(p, []).append(c)
        return {p: sorted(cs) for p, cs in sorted(out.items())}

    def centroid(self, track: int, frame: int) -> tuple[float, ...] | None:
        """The centroid of ``track`` in ``frame`` (``None`` where it is not)."""
        for (f, label), tr in self.ids.items():
            if tr == track and f == frame:
                return self.centroids[(f, label)]
        return None

    def fix_division(self, track: int) -> str:
        """The one action for a wrong division of ``track``: a daughter is cut from its parent
        (a division the tracker invented); a track without a parent is linked to the nearest
        track that ends in the frame before it starts and has fewer than two daughters (a
        missed one). Returns what was done; ``ValueError`` when there is nothing to do."""
        if track not in self.spans:
            raise ValueError(f"{track} is not a track")
        if track in self.parents:
            parent = self.parents[track]
            self.set_parent(track, None)
            return f"track {track} is no longer a daughter of {parent}"
        start = self.spans[track][0]
        here = self.centroid(track, start)
        candidates = [p for p, (_, end) in self.spans.items() if end == start - 1 and len(self.children(p)) < 2]
        if not candidates or here is None:
            raise ValueError(f"no track ends in frame {start - 1} to be the parent of track {track}")
        parent = min(candidates, key=lambda p: float(np.hypot(*np.subtract(self.centroid(p, start - 1), here))))
        self.set_parent(track, parent)
        return f"track {track} is now a daughter of {parent}"

    def set_parent(self, track: int, parent: int | None) -> None:
        """Fix a division: ``track`` becomes a daughter of ``parent`` (a division the tracker
        missed), or no one's (``None``: a division it invented). ``ValueError`` for a parent
        that does not end before the daughter starts, or a third daughter."""
        if track not in self.spans:
            raise ValueError(f"track {track} does not exist")
        if parent is None:
            self.parents.pop(track, None)
            return
        if parent not in self.spans:
            raise ValueError(f"track {parent} does not exist")
        if self.spans[parent][1] >= self.spans[track][0]:
            raise ValueError(f"track {parent} runs until frame {self.spans[parent][1]}: a parent ends before its "
                             f"daughter {track} starts (frame {self.spans[track][0]})")
        if len([c for c in self.children(parent) if c != track]) >= 2:
            raise ValueError(f"track {parent} already has two daughters")
        self.parents[track] = parent


def _objects(frame: np.ndarray) -> list[tuple[int, tuple[float, ...], int]]:
    """``(label, centroid, area)`` of each object of a label image: one ``bincount`` per axis
    (ids are compacted first when they are sparse or huge, e.g. 64-bit hashes)."""
    flat = np.asarray(frame).ravel()
    if not flat.size:
        return []
    top = int(flat.max())
    if top <= 0:
        return []
    if top > 4 * flat.size:  # sparse huge ids: compact them
        ids, flat = np.unique(flat, return_inverse=True)
    else:
        ids = None
    counts = np.bincount(flat)
    grids = np.indices(np.shape(frame)).reshape(len(np.shape(frame)), -1)
    sums = [np.bincount(flat, weights=g, minlength=len(counts)) for g in grids]
    present = np.flatnonzero(counts)
    present = present[(present != 0) if ids is None else (ids[present] != 0)]
    labels = present if ids is None else ids[present]
    return [(int(lab), tuple(float(s[i] / counts[i]) for s in sums), int(counts[i]))
            for lab, i in zip(labels, present, strict=True)]


def check_movie(shape: Sequence[int], what: str = "the movie") -> None:
    """A movie is ``T x Y x X`` or ``T x Z x Y x X`` (``ValueError`` otherwise)."""
    if len(shape) < 3:
        raise ValueError(f"{what} has shape {tuple(shape)}: a movie is T x Y x X (or T x Z x Y x X); a 2D image "
                         "has no time axis to track along")
    if len(shape) > 4:
        raise ValueError(f"{what} has shape {tuple(shape)}: a movie is T x Y x X or T x Z x Y x X (one channel)")


def iter_link(frames: Any, settings: TrackSettings | None = None) -> Generator[tuple[float, str], None, Tracks]:
    """Link the objects of ``frames`` (``T x ...`` label images: an array, zarr, dask or any
    sequence of frames; read one frame at a time) into ``Tracks``. Yields ``(fraction,
    message)`` per frame read, then once for the linking. ``ValueError`` when no frame has an
    object."""
    from laptrack import LapTrack

    settings = settings or TrackSettings()
    shape = getattr(frames, "shape", None)
    if shape is not None:
        check_movie(shape, "the labels")
    n = len(frames)
    rows: list[tuple] = []
    for t in range(n):
        frame = np.asarray(frames[t])
        if shape is None and t == 0:  # a plain sequence of frames: checked on the first
            check_movie((n, *frame.shape), "the labels")
        for label, centre, area in _objects(frame):
            rows.append((t, label, area, *centre))
        yield 0.9 * (t + 1) / n, f"frame {t + 1} of {n}: {len(rows)} objects so far"
    if not rows:
        raise ValueError("no frame has an object: nothing to track (segment the frames first)")
    table = np.array(rows, np.float64)  # frame, label, area, centroid...
    frame_of = table[:, 0].astype(np.int64)
    per_frame = [table[frame_of == f, 3:] for f in range(n)]
    rows_of = [np.flatnonzero(frame_of == f) for f in range(n)]
    cutoff = settings.max_distance**2
    lt = LapTrack(
        cutoff=cutoff,
        gap_closing_cutoff=cutoff if settings.max_gap > 0 else False,
        gap_closing_max_frame_count=max(1, settings.max_gap),
        splitting_cutoff=settings.division_distance**2 if settings.division_distance > 0 else False,
        # the cost of "no division", explicit: estimated from the movie's costs it moved with them
        # (one missing detection was enough to lose a clear division)
        no_splitting_cost=settings.division_distance**2 if settings.division_distance > 0 else None,
        merging_cutoff=False,
    )
    graph = lt.predict(per_frame)  # nodes (frame, index in that frame), edges forward in time
    # tracks from the graph: a node with two successors is a division (its successors start the
    # daughters); otherwise a node continues its predecessor's track (merging is off: at most one)
    node_row = {(f, i): int(rows_of[f][i]) for f in range(n) for i in range(len(rows_of[f]))}
    track_of: dict[tuple[int, int], int] = {}
    parents: dict[int, int] = {}
    next_track = 1
    for node in sorted(node_row):  # by frame: a predecessor is always seen first
        preds = [p for p in graph.predecessors(node)] if node in graph else []
        if preds and graph.out_degree(preds[0]) == 1:
            track_of[node] = track_of[preds[0]]
            continue
        track_of[node] = next_track
        if preds:  # a daughter
            parents[next_track] = track_of[preds[0]]
        next_track += 1
    ids = {(int(table[r, 0]), int(table[r, 1])): track_of[node] for node, r in node_row.items()}
    spans: dict[int, tuple[int, int]] = {}
    for (f, _), tr in ids.items():
        lo, hi = spans.get(tr, (f, f))
        spans[tr] = (min(lo, f), max(hi, f))
    centroids = {(int(r[0]), int(r[1])): tuple(float(v) for v in r[3:]) for r in table}
    yield 1.0, f"{len(spans)} tracks, {len(set(parents.values()))} divisions"
    return Tracks(ids, parents, spans, centroids)

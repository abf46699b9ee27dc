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
    """``(label, centroid, area)`` of each object of a label image."""
    from scipy import ndimage

    frame = np.asarray(frame)
    ids = np.unique(frame)
    ids = ids[ids != 0]
    if not len(ids):
        return []
    centres = ndimage.center_of_mass(np.ones(frame.shape, np.float32), frame, ids)
    areas = ndimage.sum_labels(np.ones(frame.shape, np.int64), frame, ids)
    return [(int(i), tuple(float(v) for v in c), int(a)) for i, c, a in zip(ids, centres, areas, strict=True)]


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
    import pandas as pd
    from laptrack import LapTrack

    settings = settings or TrackSettings()
    shape = getattr(frames, "shape", None)
    if shape is not None:
        check_movie(shape, "the labels")
    n = len(frames)
    rows: list[tuple] = []
    ndim = None
    for t in range(n):
        frame = np.asarray(frames[t])
        if shape is None and t == 0:  # a plain sequence of frames: checked on the first
            check_movie((n, *frame.shape), "the labels")
        ndim = frame.ndim
        for label, centre, area in _objects(frame):
            rows.append((t, label, area, *centre))
        yield 0.9 * (t + 1) / n, f"frame {t + 1} of {n}: {len(rows)} objects so far"
    if not rows:
        raise ValueError("no frame has an object: nothing to track (segment the frames first)")
    coords = ["z", "y", "x"][-ndim:]
    df = pd.DataFrame(rows, columns=["frame", "label", "area", *coords])
    cutoff = settings.max_distance**2
    lt = LapTrack(
        cutoff=cutoff,
        gap_closing_cutoff=cutoff if settings.max_gap > 0 else False,
        gap_closing_max_frame_count=max(1, settings.max_gap),
        splitting_cutoff=settings.division_distance**2 if settings.division_distance > 0 else False,
        merging_cutoff=False,
    )
    track_df, split_df, _ = lt.predict_dataframe(df, coordinate_cols=coords, frame_col="frame",
                                                 only_coordinate_cols=False)
    track_df = track_df.reset_index()
    first = 1 - int(track_df["track_id"].min())
    ids = {(int(f), int(lab)): int(tr) + first
           for f, lab, tr in zip(track_df["frame"], track_df["label"], track_df["track_id"], strict=True)}
    spans: dict[int, tuple[int, int]] = {}
    for (f, _), tr in ids.items():
        lo, hi = spans.get(tr, (f, f))
        spans[tr] = (min(lo, f), max(hi, f))
    parents = {int(c) + first: int(p) + first
               for p, c in zip(split_df.get("parent_track_id", []), split_df.get("child_track_id", []), strict=True)}
    centroids = {(int(r.frame), int(r.label)): tuple(float(getattr(r, c)) for c in coords)
                 for r in df.itertuples(index=False)}
    yield 1.0, f"{len(spans)} tracks, {len(set(parents.values()))} divisions"
    return Tracks(ids, parents, spans, centroids)

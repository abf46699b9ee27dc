"""Tracks out: the Cell Tracking Challenge format (``labels.tif``: ``T x ...`` with one id per
track through time; ``res_track.txt``: ``L B E P`` per track, the label, its first and last
frame and its parent, 0 for none), and the same as the CTC tools and traccuracy read it, a
folder ``ctc/`` of one ``maskTTT.tif`` per frame beside its ``res_track.txt``; and napari's
Tracks layer data.

The CTC format has no gaps inside a track: a track that skips frames (a gap the linking
closed) is written as one CTC track per continuous piece, each later piece the child of the
one before, which is how the CTC tools represent it.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from .linking import Tracks


def ctc_tracks(tracks: Tracks) -> tuple[dict[tuple[int, int], int], list[tuple[int, int, int, int]]]:
    """``({(frame, label): CTC id}, [(L, B, E, P), ...])``: tracks split at their gaps, ids
    from 1, parents mapped to the last piece of the parent track."""
    frames_of: dict[int, list[int]] = {}
    for (f, _), tr in tracks.ids.items():
        frames_of.setdefault(tr, []).append(f)
    piece_of: dict[tuple[int, int], int] = {}  # (track, frame) -> CTC id
    rows: list[tuple[int, int, int, int]] = []
    first_piece: dict[int, int] = {}
    last_piece: dict[int, int] = {}
    next_id = 1
    for tr in sorted(frames_of):
        fs = sorted(set(frames_of[tr]))
        pieces: list[list[int]] = [[fs[0]]]
        for a, b in zip(fs, fs[1:], strict=False):
            if b == a + 1:
                pieces[-1].append(b)
            else:
                pieces.append([b])
        prev = 0
        for piece in pieces:
            rows.append([next_id, piece[0], piece[-1], prev])  # type: ignore[arg-type]
            for f in piece:
                piece_of[(tr, f)] = next_id
            first_piece.setdefault(tr, next_id)
            last_piece[tr] = next_id
            prev = next_id
            next_id += 1
    by_id = {r[0]: r for r in rows}
    for child, parent in tracks.parents.items():
        if child in first_piece and parent in last_piece:
            by_id[first_piece[child]][3] = last_piece[parent]
    ids = {(f, lab): piece_of[(tr, f)] for (f, lab), tr in tracks.ids.items()}
    return ids, [tuple(r) for r in rows]  # type: ignore[misc]


def relabel_frame(frame: np.ndarray, t: int, ids: dict[tuple[int, int], int], dtype=np.uint32) -> np.ndarray:
    """Frame ``t``'s labels with each object's CTC id (objects the linking dropped become 0)."""
    frame = np.asarray(frame)
    top = int(frame.max()) if frame.size else 0
    lut = np.zeros(top + 1, dtype)
    for lab in range(1, top + 1):
        lut[lab] = ids.get((t, lab), 0)
    return lut[frame]


def iter_write_ctc(out_dir: str | Path, frames: Any, tracks: Tracks, *, force: bool = False
                   ) -> Generator[tuple[float, str], None, tuple[Path, Path]]:
    """Write ``out_dir/labels.tif`` (frame by frame: the movie is never whole in memory),
    ``out_dir/res_track.txt`` and ``out_dir/ctc/`` (``maskTTT.tif`` per frame and
    ``res_track.txt``: the CTC layout). An existing output is kept unless ``force``
    (``FileExistsError`` names it). Yields progress; returns the first two paths."""
    import tifffile

    out = Path(out_dir)
    labels_path, track_path, ctc_dir = out / "labels.tif", out / "res_track.txt", out / "ctc"
    existing = [p for p in (labels_path, track_path, ctc_dir) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists: choose another folder, or --force to replace it")
    ids, rows = ctc_tracks(tracks)
    top = max((r[0] for r in rows), default=0)
    dtype = np.uint16 if top < 2**16 else np.uint32
    n = len(frames)

    digits = max(3, len(str(n - 1)))
    text = "".join(f"{lab} {b} {e} {p}\n" for lab, b, e, p in rows)
    out.mkdir(parents=True, exist_ok=True)
    if ctc_dir.exists():  # --force: a previous run's frames go (a shorter movie would leave some)
        for old in ctc_dir.glob("mask*.tif"):
            old.unlink()
    ctc_dir.mkdir(exist_ok=True)
    part = out / ".labels.tif.part"
    try:
        with tifffile.TiffWriter(part, bigtiff=False) as tif:
            for t in range(n):
                frame = relabel_frame(frames[t], t, ids, dtype)  # one frame in memory at a time
                tif.write(frame, contiguous=True, photometric="minisblack")
                tifffile.imwrite(ctc_dir / f"mask{t:0{digits}d}.tif", frame, compression="zlib",
                                 photometric="minisblack")
                yield 0.95 * (t + 1) / n, f"frame {t + 1} of {n}"
        part.replace(labels_path)
    finally:
        part.unlink(missing_ok=True)
    atomic_write(ctc_dir / "res_track.txt", lambda tmp: tmp.write_text(text))
    atomic_write(track_path, lambda tmp: tmp.write_text(text))
    yield 1.0, f"{len(rows)} tracks"
    return labels_path, track_path


def tracks_layer_data(tracks: Tracks) -> tuple[np.ndarray, dict[int, list[int]]]:
    """napari Tracks layer data ``N x (1 + 1 + D)`` (track id, t, then the centroid in data
    order), sorted by track then time, and its ``graph`` ``{daughter: [parent]}``."""
    rows = [(tr, f, *tracks.centroids[(f, lab)]) for (f, lab), tr in tracks.ids.items()]
    data = np.array(sorted(rows), float) if rows else np.zeros((0, 4))
    graph = {int(c): [int(p)] for c, p in tracks.parents.items()}
    return data, graph

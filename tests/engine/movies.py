"""Synthetic time-lapse movies with a known answer, for tracking: cells drifting as discs,
dividing (a parent's track ends; two daughters start beside it, half its area each), two
cells moving together while touching, and one detection missing from one frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Movie:
    truth: np.ndarray  # T x H x W: one id per true track through time (the CTC ground truth)
    tracks: list[tuple[int, int, int, int]]  # L B E P of the truth
    detections: np.ndarray  # T x H x W: the same objects with ids shuffled per frame, one missing
    image: np.ndarray  # T x H x W uint8: bright discs on a dark noisy background
    missing: tuple[int, int]  # (frame, true track) whose detection was removed


def cell_movie(frames: int = 30, shape: tuple[int, int] = (160, 160), *, cells: int = 6, divisions: int = 2,
               seed: int = 0) -> Movie:
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.indices(shape)
    # track: id -> dict(begin, end, parent, positions {t: (y, x)}, radius)
    tracks: dict[int, dict] = {}
    next_id = 1
    for i in range(cells):
        y, x = rng.uniform(25, h - 25), rng.uniform(25, w - 25)
        if i == 1:  # touching the first one, moving with it
            y, x = tracks[1]["pos"][0][0], tracks[1]["pos"][0][1] + 17
        tracks[next_id] = dict(begin=0, end=frames - 1, parent=0, pos={0: (y, x)}, r=9.0,
                               v=tracks[1]["v"] if i == 1 else rng.uniform(-1.0, 1.0, 2))
        next_id += 1
    split_at = {int(f): tr for f, tr in zip(np.linspace(frames * 0.3, frames * 0.7, divisions).astype(int),
                                             rng.choice(np.arange(3, cells + 1), divisions, replace=False),
                                             strict=True)}
    for t in range(1, frames):
        for tr, d in list(tracks.items()):
            if d["end"] < t or d["begin"] >= t:
                continue
            y, x = d["pos"][t - 1]
            if split_at.get(t) == tr:  # divides: the parent ends at t - 1
                d["end"] = t - 1
                angle = rng.uniform(0, np.pi)
                for s in (-1, 1):
                    dy, dx = s * 6.5 * np.sin(angle), s * 6.5 * np.cos(angle)
                    tracks[next_id] = dict(begin=t, end=frames - 1, parent=tr, pos={t: (y + dy, x + dx)},
                                           r=d["r"] / np.sqrt(2), v=d["v"] + s * 0.4 * np.array([np.sin(angle),
                                                                                                 np.cos(angle)]))
                    next_id += 1
                continue
            if tr == 2 and 1 in tracks and t in tracks[1]["pos"]:  # the touching pair moves as one
                (py, px), (qy, qx) = tracks[1]["pos"][t - 1], tracks[1]["pos"][t]
                d["pos"][t] = (y + qy - py, x + qx - px)
                continue
            vy, vx = d["v"]
            ny, nx = y + vy + rng.normal(0, 0.3), x + vx + rng.normal(0, 0.3)
            if not (d["r"] + 2 < ny < h - d["r"] - 2):
                d["v"][0] = -vy
                ny = y - vy
            if not (d["r"] + 2 < nx < w - d["r"] - 2):
                d["v"][1] = -vx
                nx = x - vx
            others = [(o["pos"].get(t, o["pos"].get(t - 1)), o["r"]) for k, o in tracks.items()
                      if k != tr and {k, tr} != {1, 2} and (t in o["pos"] or t - 1 in o["pos"]) and o["end"] >= t - 1
                      and o["begin"] <= t]
            if any(q is not None and np.hypot(ny - q[0], nx - q[1]) < r + d["r"] + 1 for q, r in others):
                d["v"] = -np.asarray(d["v"])  # cells do not overlap: it bounces and stays
                ny, nx = y, x
            d["pos"][t] = (ny, nx)
    truth = np.zeros((frames, *shape), np.uint16)
    for tr, d in tracks.items():
        for t, (y, x) in d["pos"].items():
            disc = (yy - y) ** 2 + (xx - x) ** 2 <= d["r"] ** 2
            truth[t][disc & (truth[t] == 0)] = tr
    rows = [(tr, d["begin"], d["end"], d["parent"]) for tr, d in sorted(tracks.items())]
    missing = (frames // 2, 2)  # the touching pair's second cell vanishes from one frame's detections
    detections = np.zeros_like(truth)
    for t in range(frames):
        ids = [int(i) for i in np.unique(truth[t]) if i]
        shuffled = rng.permutation(len(ids)) + 1
        for i, new in zip(ids, shuffled, strict=True):
            if (t, i) != missing:
                detections[t][truth[t] == i] = new + 50 * (t % 3)
    image = np.where(truth > 0, 200.0, 40.0) + rng.normal(0, 8, truth.shape)
    return Movie(truth, rows, detections, np.clip(image, 0, 255).astype(np.uint8), missing)

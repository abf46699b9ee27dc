"""Linking speed and memory: a 500-frame 512 x 512 movie of ~60 drifting cells, its label frames
made on the fly (read lazily, as from a zarr or a TIFF on disk), linked with divisions.

    python benchmarks/bench_tracking.py [--frames 500] [--cells 60]

Printed: frames per second for the whole linking (each frame's centroids, then laptrack), and
the peak resident memory of the linking for 100 and for --frames frames, each in its own
process: it should not grow with the movie's length beyond the table of centroids. Target
(issue #31): at least 50 frames a second on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class LazyMovie:
    """``T x 512 x 512`` label frames drawn when read: cells on random walks, ids shuffled."""

    def __init__(self, frames: int, cells: int, size: int = 512, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.shape = (frames, size, size)
        start = rng.uniform(20, size - 20, (cells, 2))
        steps = rng.normal(0, 1.0, (frames, cells, 2))
        self.pos = np.clip(start + np.cumsum(steps, axis=0), 12, size - 12)
        self.r = rng.uniform(5, 9, cells)
        self.seed = seed

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: int) -> np.ndarray:
        frame = np.zeros(self.shape[1:], np.uint16)
        order = np.random.default_rng([self.seed, t]).permutation(len(self.r)) + 1
        for i, ((y, x), r) in enumerate(zip(self.pos[t], self.r, strict=True)):
            y0, x0, rr = int(y - r), int(x - r), int(np.ceil(r))
            yy, xx = np.mgrid[y0 : y0 + 2 * rr + 2, x0 : x0 + 2 * rr + 2]
            disc = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
            window = frame[y0 : y0 + 2 * rr + 2, x0 : x0 + 2 * rr + 2]
            window[disc[: window.shape[0], : window.shape[1]] & (window == 0)] = order[i]
        return frame


def worker(frames: int, cells: int) -> dict:
    from napari_sam_hq.engine.tracking.linking import TrackSettings, iter_link
    from napari_sam_hq.model.steps import exhaust

    movie = LazyMovie(frames, cells)
    t0 = time.perf_counter()
    tracks = exhaust(iter_link(movie, TrackSettings(max_distance=10, division_distance=0)))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "tracks": len(tracks.spans), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--cells", type=int, default=60)
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    # drawing the frames is part of the timing here; time it alone to subtract it
    movie = LazyMovie(args.frames, args.cells)
    t0 = time.perf_counter()
    for t in range(len(movie)):
        movie[t]
    draw = time.perf_counter() - t0
    print(f"{args.frames} frames of 512 x 512, {args.cells} cells; drawing the frames alone: {draw:.1f} s")
    for n in (100, args.frames):
        out = subprocess.run([sys.executable, __file__, "--worker", str(n), str(args.cells)], capture_output=True,
                             text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        drawn = draw * n / args.frames
        fps = n / max(1e-9, r["seconds"] - drawn)
        print(f"  {n:4d} frames: {r['seconds']:.1f} s with the drawing, {fps:.0f} frames/s without it, "
              f"{r['tracks']} tracks, peak RSS {r['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()

"""Propagation thresholds on synthetic volumes with known ground truth.

    python benchmarks/tune_propagation.py

Volumes: blurred, noisy ellipsoids of several sizes and elongations, alone and in touching
pairs. Each object is seeded with its true mask on its middle slice and propagated with
the deterministic rule model of the tests (``tests/engine/fake_predictor.py``: the bright
component under the prompt, through the real frames). Prints, per IoU threshold, the mean
and worst Dice against the truth, the slices missed at the ends, and slices written outside
the object. Not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [
    ("small sphere", (24, 128, 128), (((12, 64, 64), (5, 12, 12)),)),
    ("flat ellipsoid", (24, 128, 128), (((12, 64, 64), (4, 40, 30)),)),
    ("tall ellipsoid", (40, 128, 128), (((20, 64, 64), (16, 25, 20)),)),
    ("touching pair", (24, 100, 130), (((10, 50, 45), (7, 22, 20)), ((12, 50, 86), (8, 22, 22)))),
    ("offset pair", (30, 110, 110), (((12, 40, 40), (8, 20, 20)), ((16, 70, 70), (8, 20, 20)))),
]


def main() -> None:
    from napari_sam_hq.engine import EmbeddingStore, PropagationSettings, SegmentationSession
    from napari_sam_hq.engine.volumes.propagation import iter_propagate, seeds_from_labels, write_propagation
    from napari_sam_hq.model.common import exhaust
    from tests.engine.fake_predictor import FakeModel, FakePredictor, ellipsoid_volume, paint_seeds

    print("iou_thr | mean Dice | worst Dice | end slices missed | slices beyond the object")
    for thr in (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        dices, missed, beyond = [], 0, 0
        for seed, (_, shape, blobs) in enumerate(CASES * 2):  # two noise draws per case
            image, truth = ellipsoid_volume(shape, blobs, seed=seed)
            session = SegmentationSession(FakeModel(), image, store=EmbeddingStore(None, max_in_memory=64),
                                          predictor_factory=FakePredictor)
            middle = {i + 1: {b[0][0]} for i, b in enumerate(blobs)}
            seeds = seeds_from_labels(truth, slices=middle)
            found = exhaust(iter_propagate(session, seeds, settings=PropagationSettings(iou_threshold=thr)))
            labels = paint_seeds(truth.shape, seeds, truth.dtype)
            for z, plane in write_propagation(labels, found).items():
                labels[z] = plane
            for label in seeds:
                a, b = labels == label, truth == label
                dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
                zt = set(np.nonzero(b.any(axis=(1, 2)))[0])
                zf = set(np.nonzero(a.any(axis=(1, 2)))[0])
                missed += len(zt - zf)
                beyond += len(zf - zt)
        print(f"  {thr:.1f}   |   {np.mean(dices):.3f}   |   {min(dices):.3f}    | {missed:17d} | {beyond:d}")


if __name__ == "__main__":
    main()

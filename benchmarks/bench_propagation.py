"""Which propagation prompt holds best on your data? Every prompt kind, one run, one table.

    python benchmarks/bench_propagation.py --model vit_b --image volume.tif --labels truth.tif [--seed-slice 40]
    python benchmarks/bench_propagation.py            # a synthetic demo volume, random vit_tiny weights

Every object of ``--labels`` (a Z x Y x X label image of ``--image``) is given on its seed slice
(``--seed-slice``, default: each object's middle slice) and propagated through the volume with
each prompt kind (``PropagationSettings.prompt``). Printed per kind: the mean IoU per slice
against the labels (each object on each slice where it or its propagation is, averaged), the
slices reached, and the seconds. Thresholds are the defaults, so a kind that loses the object
early scores the slices it missed as 0.

Our default, a single interior point, follows micro-sam's measurement on an EM volume (docs/
volumes.md); trained weights do not exist on our machines, so we could not measure it
ourselves: with random weights (the demo) the numbers mean nothing but that the command runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def mean_iou_per_slice(truth: np.ndarray, labels: np.ndarray, ids: list[int]) -> float:
    scores = []
    for i in ids:
        t, p = truth == i, labels == i
        for z in np.nonzero((t | p).any(axis=(1, 2)))[0]:
            union = (t[z] | p[z]).sum()
            scores.append((t[z] & p[z]).sum() / union)
    return float(np.mean(scores)) if scores else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="vit_tiny, vit_b, ... or a checkpoint (default: random vit_tiny, demo)")
    parser.add_argument("--image", help="the volume (Z x Y x X)")
    parser.add_argument("--labels", help="its labels (Z x Y x X integer ids)")
    parser.add_argument("--seed-slice", type=int, help="the slice every object is given on (default: its middle)")
    parser.add_argument("--kinds", nargs="+", help="prompt kinds to compare (default: all)")
    parser.add_argument("--store", help="embedding store folder (default: RAM)")
    args = parser.parse_args()

    import tifffile

    from napari_sam_hq.engine import EmbeddingStore, PropagationSettings, SegmentationSession
    from napari_sam_hq.engine.volumes.propagation import PROMPT_KINDS, iter_propagate, write_propagation
    from napari_sam_hq.model import load_model
    from napari_sam_hq.model.steps import exhaust

    with tempfile.TemporaryDirectory() as tmp:
        if args.image:
            image, truth = tifffile.imread(args.image), tifffile.imread(args.labels).astype(np.int64)
            model = load_model(args.model or "vit_tiny", device="auto")
        else:
            from bench_model import _make_checkpoints

            from tests.engine.fake_predictor import ellipsoid_volume

            blobs = (((12, 60, 60), (9, 30, 24)), ((14, 70, 130), (10, 26, 30)), ((10, 140, 90), (8, 22, 22)))
            image, truth = ellipsoid_volume((26, 192, 192), blobs, seed=0)
            model = load_model(args.model or _make_checkpoints(Path(tmp), "vit_tiny")[0], device="cpu")
            print("demo: a synthetic volume and random vit_tiny weights: the numbers mean nothing here")
        ids = [int(i) for i in np.unique(truth) if i]
        seeds = {}
        for i in ids:
            zs = np.nonzero((truth == i).any(axis=(1, 2)))[0]
            z = args.seed_slice if args.seed_slice is not None else int(zs[len(zs) // 2])
            if (truth[z] == i).any():
                seeds[i] = {z: truth[z] == i}
        session = SegmentationSession(model, image, store=EmbeddingStore(args.store))
        exhaust(session.iter_embed())  # encoded once, shared by every kind
        print(f"{len(seeds)} objects, {image.shape[0]} slices, model {model.name}")
        print(f"{'prompt':18} {'mean IoU/slice':>15} {'slices':>7} {'seconds':>8}")
        for kind in args.kinds or PROMPT_KINDS:
            t0 = time.perf_counter()
            found = exhaust(iter_propagate(session, seeds, settings=PropagationSettings(prompt=kind)))
            seconds = time.perf_counter() - t0
            labels = np.zeros_like(truth)
            for i, planes in seeds.items():
                for z, m in planes.items():
                    labels[z][m] = i
            for z, plane in write_propagation(labels, found).items():
                labels[z] = plane
            print(f"{kind:18} {mean_iou_per_slice(truth, labels, list(seeds)):15.3f} {len(found):7d} {seconds:8.1f}")


if __name__ == "__main__":
    main()

"""Segment everything in seconds: the instance head (ais), its prompts (apg) and the coarse-to-
fine grid (amg) against the full grid, on vit_tiny with seeded random weights, 512 x 512
synthetic scenes of touching cells (tests/engine/scenes.py), one run, ratios printed.

    python benchmarks/bench_instances.py [--minutes 5] [--images 10] [--size 512]

1. Training the head on ``--images`` scenes (one in five held out), the held-out AP50 and AP
   (IoU 0.5-0.95) at every evaluation, and when most (90%) of the final gain was reached.
2. On two new scenes, in one process, each timed after a fresh embedding: ais end to end
   and after the embedding, apg after the embedding, amg full grid and coarse to fine after
   the embedding (thresholds 0: random weights score every mask near 0, so with the default
   thresholds every mask head is skipped and the grid costs nothing but the transformer).
3. Whole processes, interleaved: ``napari-sam-hq auto --mode ais --head`` against ``auto
   --mode amg --full-grid`` (what amg did before coarse to fine), and with ``--baseline-rev
   REV`` against ``auto`` of that commit (checked out in a temporary git worktree): issue
   #30's "amg today" is ``1e17a32``, the tree the issue was written on. The full grid of
   this tree is faster than that (the decoder's transformer got faster since), so its ratio
   is the stricter one.
Targets (issue #30): ais <= 2 s end to end and <= 0.5 s after the embedding; the ais
process <= 0.15 x the full-grid process; apg <= 5 s after the embedding; coarse to fine
>= 3x the full grid. Not a test: the machine's speed drifts, compare within one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="the head's training budget")
    parser.add_argument("--images", type=int, default=10, help="training scenes (one in five held out)")
    parser.add_argument("--size", type=int, default=512, help="scene size (pixels)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--baseline-rev", help="also time `auto` of this git commit (e.g. 1e17a32)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the whole processes")
    args = parser.parse_args()

    import tifffile
    from bench_model import _make_checkpoints

    from napari_sam_hq.engine import EmbeddingStore, SegmentationSession
    from napari_sam_hq.engine.automatic.everything import AutoSettings
    from napari_sam_hq.engine.automatic.head_training import HeadTrainSettings, iter_head_samples, iter_train_head
    from napari_sam_hq.engine.automatic.instances import average_precision, save_head
    from napari_sam_hq.engine.automatic.modes import iter_segment_everything
    from napari_sam_hq.engine.volumes import memory
    from napari_sam_hq.model import load_model
    from napari_sam_hq.model.steps import exhaust
    from tests.engine.scenes import cell_scene

    memory.setup_heap()  # as the command line and the widget do
    s = args.size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vit_tiny (random weights), {s} x {s}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, _ = _make_checkpoints(tmp, "vit_tiny")
        model = load_model(ckpt, device="cpu")
        scenes = [cell_scene((s, s), seed=100 + i) for i in range(args.images + 2)]
        train_images = np.stack([im for im, _ in scenes[: args.images]])
        train_labels = np.stack([lab for _, lab in scenes[: args.images]])

        # 1. training
        session = SegmentationSession(model, train_images, store=EmbeddingStore(None, max_in_memory=64))
        samples, t_embed_all = _timed(exhaust, iter_head_samples(session, train_labels))
        print(f"\n1. training: {len(samples)} images embedded in {t_embed_all:.0f} s; budget {args.minutes:g} min")
        curve, start = [], time.perf_counter()
        gen = iter_train_head(model, samples, HeadTrainSettings(minutes=args.minutes, val_fraction=0.2))
        try:
            while True:
                step = next(gen)
                if step.val_ap50 is not None:
                    curve.append((time.perf_counter() - start, step.step, step.val_ap50, step.val_ap))
                    print(f"   {curve[-1][0]:6.0f} s  step {step.step:5d}  held-out AP50 {step.val_ap50:.3f}  "
                          f"AP {step.val_ap:.3f}", flush=True)
        except StopIteration as stop:
            result = stop.value
        gain = result.ap50_after - result.ap50_before
        reached = next((t for t, _, ap50, _ in curve if ap50 >= result.ap50_before + 0.9 * gain), float("nan"))
        print(f"   AP50 {result.ap50_before:.3f} -> {result.ap50_after:.3f} (AP {result.ap_after:.3f}); 90% of the "
              f"gain at {reached:.0f} s; {result.steps} steps in {result.seconds:.0f} s; stopped: {result.stopped}")
        head = result.head
        head_path, _ = save_head(tmp / "cells.head.pth", head, result.card)

        # 2. in one process, after a fresh embedding each
        print("\n2. one process, two new scenes (seconds; AP50 against the known answer)")
        grid_kw = dict(points_per_side=args.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                       min_mask_region_area=0, max_mask_fraction=0.5)
        rows: dict[str, list] = {}
        for image, truth in scenes[args.images :]:
            sess = SegmentationSession(model, image, store=EmbeddingStore(None))
            _, t_embed = _timed(exhaust, sess.iter_embed())
            labels, t = _timed(exhaust, iter_segment_everything(sess, [()], mode="ais", head=head))
            rows.setdefault("embedding", []).append((t_embed, None))
            rows.setdefault("ais after the embedding", []).append((t, average_precision(truth, labels)))
            rows.setdefault("ais end to end", []).append((t_embed + t, None))
            labels, t = _timed(exhaust, iter_segment_everything(sess, [()], mode="apg", head=head))
            rows.setdefault("apg after the embedding", []).append((t, average_precision(truth, labels)))
            for name, c2f in (("amg full grid", False), ("amg coarse to fine", True)):
                settings = AutoSettings(coarse_to_fine=c2f, **grid_kw)
                labels, t = _timed(exhaust, iter_segment_everything(sess, [()], settings, mode="amg"))
                rows.setdefault(f"{name} after the embedding", []).append((t, int(labels.max())))
        for name, values in rows.items():
            secs = [v for v, _ in values]
            extra = [x for _, x in values if x is not None]
            note = "" if not extra else (f"  AP50 {', '.join(f'{x:.2f}' for x in extra)}" if isinstance(extra[0], float)
                                         else f"  objects {', '.join(map(str, extra))}")
            print(f"   {name:32} {', '.join(f'{v:6.2f}' for v in secs)}{note}")
        full = np.mean([v for v, _ in rows["amg full grid after the embedding"]])
        fine = np.mean([v for v, _ in rows["amg coarse to fine after the embedding"]])
        print(f"   coarse to fine: {full / fine:.1f}x the full grid (target >= 3x)")

        # 3. whole processes, interleaved
        print("\n3. whole processes (napari-sam-hq auto, --store none), interleaved")
        image_path = tmp / "scene.tif"
        tifffile.imwrite(image_path, scenes[-1][0])
        base = [sys.executable, "-m", "napari_sam_hq.cli", "auto", str(image_path), "--model", ckpt, "--device",
                "cpu", "--store", "none"]
        commands = {
            "ais": [*base, "--mode", "ais", "--head", str(head_path), "--out", str(tmp / "ais.tif")],
            "amg full grid": [*base, "--mode", "amg", "--full-grid", "--out", str(tmp / "amg.tif")],
        }
        env = {}
        if args.baseline_rev:
            tree = tmp / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline_rev],
                           check=True, capture_output=True)
            commands[f"amg at {args.baseline_rev}"] = [*base, "--out", str(tmp / "old.tif")]
            env[f"amg at {args.baseline_rev}"] = {**os.environ, "PYTHONPATH": str(tree / "src")}
        times: dict[str, list[float]] = {k: [] for k in commands}
        try:
            for _ in range(args.repeats):
                for name, cmd in commands.items():
                    t0 = time.perf_counter()
                    subprocess.run(cmd, check=True, capture_output=True, env=env.get(name))
                    times[name].append(time.perf_counter() - t0)
        finally:
            if args.baseline_rev:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "baseline")],
                               capture_output=True)
        for name, ts in times.items():
            print(f"   {name:16} {', '.join(f'{t:6.2f}' for t in ts)} s")
        for name in list(commands)[1:]:
            ratio = np.mean(times["ais"]) / np.mean(times[name])
            print(f"   ais / {name}: {ratio:.3f} (target <= 0.15)")


if __name__ == "__main__":
    main()

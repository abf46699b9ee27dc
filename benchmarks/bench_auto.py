"""Segment everything: ours against the official SamAutomaticMaskGenerator, same weights, same run.

    python benchmarks/bench_auto.py [--models vit_b vit_tiny] [--points-per-side 32]

One 1024 x 1024 image, 32 x 32 point prompts. Each implementation runs in its own process
on the same seeded random checkpoint. Two settings:
- *all heads*: pred_iou_thresh 0, so every prompt's masks are computed, upscaled and
  scored (the worst case for us: nothing is skipped);
- *defaults*: pred_iou_thresh 0.88, stability 0.95. With random weights the predicted IoUs
  are near 0, so we skip almost every mask head; the official code computes them all.
  This shows the skip, not a typical image.
Printed: seconds with and without the embedding, decoder prompts per second, masks kept,
and ratios (official / ours: above 1 means we are faster). Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SETTINGS = {
    "all heads": dict(pred_iou_thresh=0.0, stability_score_thresh=0.95),
    "defaults": dict(pred_iou_thresh=0.88, stability_score_thresh=0.95),
}


def worker_ours(ckpt: str, n: int, setting: str) -> dict:
    from bench_model import _image

    from napari_sam_hq.engine import EmbeddingStore, SegmentationSession
    from napari_sam_hq.engine.automatic.everything import AutoSettings, iter_generate_masks
    from napari_sam_hq.model import load_model
    from napari_sam_hq.model.common import exhaust

    model = load_model(ckpt, device="cpu")
    image = _image()
    session = SegmentationSession(model, image, rgb=True, store=EmbeddingStore(None))
    t0 = time.perf_counter()
    exhaust(session.iter_embed())
    t_embed = time.perf_counter() - t0
    settings = AutoSettings(points_per_side=n, min_mask_region_area=0, max_mask_fraction=1.0, **SETTINGS[setting])
    t1 = time.perf_counter()
    masks = exhaust(iter_generate_masks(session, (), settings))
    t_auto = time.perf_counter() - t1
    return {"embed_s": t_embed, "auto_s": t_auto, "masks": len(masks)}


def worker_official(ckpt: str, name: str, n: int, setting: str) -> dict:
    from bench_model import _image

    from tests.oracles import import_official, refresh_official

    sah = import_official()
    model = sah.sam_model_registry[name]()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    refresh_official(model)
    image = _image()
    generator = sah.SamAutomaticMaskGenerator(model, points_per_side=n, **SETTINGS[setting])
    with torch.inference_mode():
        t0 = time.perf_counter()
        generator.predictor.set_image(image)
        t_embed = time.perf_counter() - t0
        t1 = time.perf_counter()
        masks = generator.generate(image)  # embeds again inside: subtract the embedding
        t_total = time.perf_counter() - t1
    return {"embed_s": t_embed, "auto_s": t_total - t_embed, "masks": len(masks)}


def _run(args: list[str]) -> dict | None:
    from bench_model import run_worker

    return run_worker(__file__, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_tiny"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, ckpt, name, n, setting = args.worker
        out = worker_ours(ckpt, int(n), setting) if kind == "ours" else worker_official(ckpt, name, int(n), setting)
        print(json.dumps(out))
        return

    from bench_model import _make_checkpoints

    n = args.points_per_side
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 1024 x 1024, {n} x {n} points")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            pth, _ = _make_checkpoints(Path(tmp), name)
            for setting in args.settings:
                ours = _run(["--worker", "ours", pth, name, str(n), setting])
                off = _run(["--worker", "official", pth, name, str(n), setting])
                if not ours:
                    continue
                print(f"\n{name}, {setting} ({SETTINGS[setting]})")
                rate = n * n / ours["auto_s"]
                line = (f"  ours      embed {ours['embed_s']:6.1f} s | segment {ours['auto_s']:7.1f} s | total "
                        f"{ours['embed_s'] + ours['auto_s']:7.1f} s | {rate:6.1f} prompts/s | {ours['masks']} masks")
                print(line)
                if off:
                    print(f"  official  embed {off['embed_s']:6.1f} s | segment {off['auto_s']:7.1f} s | total "
                          f"{off['embed_s'] + off['auto_s']:7.1f} s | {n * n / off['auto_s']:6.1f} prompts/s | "
                          f"{off['masks']} masks")
                    print(f"  speed-up  segment {off['auto_s'] / ours['auto_s']:.1f}x | total "
                          f"{(off['embed_s'] + off['auto_s']) / (ours['embed_s'] + ours['auto_s']):.1f}x")


if __name__ == "__main__":
    main()

"""Stacks: time to the first prompt, whole-stack throughput, reopening from the store, RAM, disk.

    python benchmarks/bench_volume.py                      # 64 x 512 x 512, vit_tiny and vit_b
    python benchmarks/bench_volume.py --slices 16 --models vit_tiny

Per model, in a fresh process (its own peak RSS), on a seeded random checkpoint:
1. load the model, encode the slice on screen (the middle one) -> time to the first prompt;
2. encode the rest -> slices per second;
3. a new session on a new store object over the same folder -> reopen time (every entry
   read back and checked), and the first prompt after the reopen;
then the official ``SamPredictor.set_image`` on two slices of the same stack, in its own
process, for the throughput ratio (it has no store: reopening means recomputing).
Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _stack(n: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """uint16 Z x Y x X stack of blurred noisy ellipsoids, like a nuclei volume."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices((n, size, size), dtype=np.float32)
    vol = np.zeros((n, size, size), np.float32)
    for _ in range(40):
        c = rng.uniform([0, 0, 0], [n, size, size])
        a = rng.uniform([3, 15, 15], [10, 45, 45])
        vol += 800 * ((((zz - c[0]) / a[0]) ** 2 + ((yy - c[1]) / a[1]) ** 2 + ((xx - c[2]) / a[2]) ** 2) <= 1)
    vol = ndimage.gaussian_filter(vol, (0.5, 1.5, 1.5)) + 300 + rng.normal(0, 40, vol.shape)
    return vol.clip(0, 65535).astype(np.uint16)


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker_ours(ckpt: str, store_dir: str, n: int) -> dict:
    from napari_sam_hq.engine import EmbeddingStore, SegmentationSession
    from napari_sam_hq.model import load_model
    from napari_sam_hq.model.common import exhaust

    stack = _stack(n)
    mid = (n // 2,)
    t0 = time.perf_counter()
    model = load_model(ckpt, device="cpu")
    t_load = time.perf_counter() - t0
    session = SegmentationSession(model, stack, store=EmbeddingStore(store_dir))
    exhaust(session.iter_embed([mid]))
    session.segment(mid, [{"point_coords": [[256, 256]], "point_labels": [1]}])
    t_first = time.perf_counter() - t0
    t1 = time.perf_counter()
    order = sorted(session.keys, key=lambda k: abs(k[0] - mid[0]))
    exhaust(session.iter_embed(order[1:]))
    t_rest = time.perf_counter() - t1
    store = EmbeddingStore(store_dir)
    reopened = SegmentationSession(model, stack, store=store)
    t2 = time.perf_counter()
    exhaust(reopened.iter_embed())
    t_reopen = time.perf_counter() - t2
    assert store.writes == 0, "reopen recomputed something"
    t3 = time.perf_counter()
    reopened.segment((3,), [{"point_coords": [[256, 256]], "point_labels": [1]}])
    t_prompt = time.perf_counter() - t3
    return {
        "load_s": t_load,
        "first_prompt_s": t_first,
        "slices_per_s": (n - 1) / t_rest,
        "recompute_s": t_first - t_load + t_rest,
        "reopen_s": t_reopen,
        "prompt_after_reopen_s": t_prompt,
        "store_mb_per_slice": store.size_bytes() / 2**20 / n,
    }


def worker_official(ckpt: str, name: str, n: int) -> dict:
    from napari_sam_hq.engine import to_model_rgb
    from tests.oracles import import_official, refresh_official

    sah = import_official()
    model = sah.sam_model_registry[name]()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    refresh_official(model)
    predictor = sah.SamPredictor(model)
    stack = _stack(n)
    times = []
    with torch.inference_mode():
        for z in (n // 2, n // 2 + 1):
            rgb = to_model_rgb(stack[z]).astype(np.uint8)  # the official code takes uint8 RGB
            t = time.perf_counter()
            predictor.set_image(rgb)
            times.append(time.perf_counter() - t)
    return {"slices_per_s": 1 / float(np.median(times))}


def _run(args: list[str]) -> dict | None:
    from bench_model import run_worker

    return run_worker(__file__, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "vit_b"])
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, ckpt, name, extra, n = args.worker
        out = worker_ours(ckpt, extra, int(n)) if kind == "ours" else worker_official(ckpt, name, int(n))
        out["peak_rss_mb"] = _peak_mb()
        print(json.dumps(out))
        return

    from bench_model import _make_checkpoints

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; stack {args.slices} x 512 x 512 uint16")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            pth, _ = _make_checkpoints(Path(tmp), name)
            store = str(Path(tmp) / f"store-{name}.zarr")
            ours = _run(["--worker", "ours", pth, name, store, str(args.slices)])
            official = None if args.no_official else _run(["--worker", "official", pth, name, "-", str(args.slices)])
            if not ours:
                continue
            print(f"\n{name}")
            print(f"  model load              {ours['load_s']:8.2f} s")
            print(f"  first prompt (cold)     {ours['first_prompt_s']:8.2f} s  (load + one slice + one prompt)")
            line = f"  throughput              {ours['slices_per_s']:8.3f} slices/s"
            if official:
                ratio = ours["slices_per_s"] / official["slices_per_s"]
                line += f" | official {official['slices_per_s']:.3f} slices/s (ratio {ratio:.2f}x)"
            print(line)
            print(f"  recompute whole stack   {ours['recompute_s']:8.2f} s")
            print(
                f"  reopen from the store   {ours['reopen_s']:8.2f} s  "
                f"({ours['recompute_s'] / ours['reopen_s']:.0f}x faster than recomputing)"
            )
            print(f"  first prompt on reopen  {ours['prompt_after_reopen_s'] * 1000:8.0f} ms")
            print(f"  store on disk           {ours['store_mb_per_slice']:8.2f} MB per slice (float16, zstd)")
            line = f"  peak RSS                {ours['peak_rss_mb']:8.0f} MB"
            if official:
                line += f" | official {official['peak_rss_mb']:.0f} MB"
            print(line)


if __name__ == "__main__":
    main()

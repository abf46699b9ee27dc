"""Ours against the official code on one device, float32 and half precision: set_image, one
prompt, 50 boxes, a stack of 1024 x 1024 slices (slices per second), peak device memory, and
how far half-precision logits and masks are from float32 (ours and the official code's).

    python benchmarks/bench_gpu.py                          # CUDA (or MPS), vit_b and vit_tiny
    python benchmarks/bench_gpu.py --device cpu --models vit_tiny --stack 4 --repeats 1
    python benchmarks/bench_gpu.py --json results.json      # the figures as JSON as well

Seeded random weights in the official layout (pretrained ones cannot be downloaded where
this was written); both implementations load the same file. Times are medians after a
warm-up, with the device synchronised around each call; ratios are ours / official,
measured in the same process. On the CPU, half precision is emulated slowly (no fast
half-precision units there): use it for the accuracy columns only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.oracles (stand-ins that let the official code import)

POINT = np.array([[512, 400]])
BOXES = np.array([[40 + 15 * i, 30 + 12 * i, 400 + 10 * i, 500 + 8 * i] for i in range(50)], float)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _image(seed: int = 0, size: int = 1024) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = 40 + 60 * xx / size
    for _ in range(12):
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(30, 160)]
        img = img + 110 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernel selection, caches)
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def ours(ckpt: str, device: torch.device, dtype: torch.dtype, stack: int, repeats: int) -> dict:
    from napari_sam_hq.engine import EmbeddingStore, SamHQPredictor, SegmentationSession
    from napari_sam_hq.model import load_model

    model = load_model(ckpt, device=device, dtype=dtype)
    pred = SamHQPredictor(model)
    img = _image()
    _peak_reset(device)
    out = {"set_image": _time(lambda: pred.set_image(img), device, repeats)}
    out["peak_set_image_gb"] = _peak_gb(device)
    out["one_point"] = _time(lambda: pred.predict(POINT, np.array([1])), device, 5 * repeats)
    out["boxes_50"] = _time(lambda: pred.predict_batch(boxes=BOXES), device, repeats)
    first = pred.predict_batch(boxes=BOXES[:8], point_coords=None)
    out["_logits"] = first.low_res_logits[:, 0]
    out["_masks"] = first.masks[:, 0]
    if stack:
        volume = np.stack([_image(seed=s)[..., 0] for s in range(stack)])
        for batch in (1, 4, 8):
            session = SegmentationSession(model, volume, store=EmbeddingStore(None, max_in_memory=1),
                                          embed_batch=batch)
            _peak_reset(device)
            t = time.perf_counter()
            for _ in session.iter_embed():
                pass
            _sync(device)
            out[f"stack_slices_per_s_batch{batch}"] = stack / (time.perf_counter() - t)
            out[f"peak_stack_batch{batch}_gb"] = _peak_gb(device)
    return out


def official(ckpt: str, name: str, device: torch.device, repeats: int) -> dict:
    from tests.oracles import import_official, refresh_official

    sah = import_official()
    model = sah.sam_model_registry[name]()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    refresh_official(model)
    model.to(device).eval()
    pred = sah.SamPredictor(model)
    img = _image()
    with torch.inference_mode():
        _peak_reset(device)
        out = {"set_image": _time(lambda: pred.set_image(img), device, repeats)}
        out["peak_set_image_gb"] = _peak_gb(device)
        out["one_point"] = _time(lambda: pred.predict(POINT, np.array([1]), multimask_output=False), device,
                                 5 * repeats)
        boxes = pred.transform.apply_boxes_torch(torch.as_tensor(BOXES, dtype=torch.float, device=device),
                                                 img.shape[:2])

        def batch():
            masks, _, _ = pred.predict_torch(None, None, boxes=boxes, multimask_output=False)
            masks.cpu().numpy()

        out["boxes_50"] = _time(batch, device, repeats)
        masks, _, low = pred.predict_torch(None, None, boxes=boxes[:8], multimask_output=False)
        out["_logits"] = low[:, 0].float().cpu().numpy()
        out["_masks"] = masks[:, 0].cpu().numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_tiny"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"], choices=list(DTYPES))
    parser.add_argument("--stack", type=int, default=64, help="slices of 1024 x 1024 (0: skip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    from napari_sam_hq.model.build import resolve_device
    from tests.oracles import noisy_state_dict, official_model

    device = resolve_device(args.device)
    name_of = torch.cuda.get_device_name() if device.type == "cuda" else str(device)
    print(f"device: {name_of}; torch {torch.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ckpt = str(Path(tmp) / f"{name}.pth")
            torch.manual_seed(0)
            torch.save(noisy_state_dict(official_model(name), seed=0), ckpt)
            ref = None if args.no_official else official(ckpt, name, device, args.repeats)
            rows = {}
            for dt in args.dtypes:
                try:
                    rows[dt] = ours(ckpt, device, DTYPES[dt], args.stack, args.repeats)
                except (RuntimeError, TypeError) as err:  # a dtype the device cannot run
                    print(f"  {name} {dt}: not run ({str(err).splitlines()[0]})")
            base = rows.get("float32")
            for dt, r in rows.items():
                line = [f"{name:8s} {dt:8s}"]
                for key in ("set_image", "one_point", "boxes_50"):
                    ratio = f" ({r[key] / ref[key]:.2f}x)" if ref else ""
                    line.append(f"{key} {1000 * r[key]:8.1f} ms{ratio}")
                if r.get("peak_set_image_gb") is not None:
                    line.append(f"peak {r['peak_set_image_gb']:.2f} GB")
                print(" | ".join(line))
                stack_keys = [k for k in r if k.startswith("stack_slices")]
                if stack_keys:
                    print("           stack: " + ", ".join(f"batch {k.rsplit('batch', 1)[1]} {r[k]:.1f} slices/s"
                                                         for k in stack_keys))
                for other, label in ((base, "ours float32"), (ref, "official float32")):
                    if other is None or other is r:
                        continue
                    diff = np.abs(r["_logits"] - other["_logits"]).max()
                    ious = [_iou(a, b) for a, b in zip(r["_masks"], other["_masks"], strict=True)]
                    print(f"           vs {label}: max |logit diff| {diff:.3g}, mask IoU min {min(ious):.4f} "
                          f"mean {np.mean(ious):.4f}")
                    r[f"vs {label}"] = {"max_logit_diff": float(diff), "mask_iou_min": min(ious),
                                        "mask_iou_mean": float(np.mean(ious))}
            if ref:
                print(f"{name:8s} official float32 | set_image {1000 * ref['set_image']:8.1f} ms | one_point "
                      f"{1000 * ref['one_point']:8.1f} ms | boxes_50 {1000 * ref['boxes_50']:8.1f} ms"
                      + (f" | peak {ref['peak_set_image_gb']:.2f} GB" if ref.get("peak_set_image_gb") else ""))
            results[name] = {"official": ref, **rows}
    if args.json:
        clean = {m: {k: {kk: vv for kk, vv in (v or {}).items() if not kk.startswith("_")} for k, v in r.items()}
                 for m, r in results.items()}
        Path(args.json).write_text(json.dumps({"device": name_of, "results": clean}, indent=2))


if __name__ == "__main__":
    main()

"""Speed and memory of our SAM-HQ against the official code and transformers, same weights.

    python benchmarks/bench_model.py            # vit_b and vit_tiny, all implementations
    python benchmarks/bench_model.py --quick    # fewer repeats
    python benchmarks/bench_model.py --models vit_tiny --rounds 5

Each implementation runs in its own subprocess (so its peak RSS is its own) on the same
seeded random checkpoint in the official format. The machine's speed drifts (memory-bound
work by +-30% over minutes here), so the implementations alternate over several rounds and
each figure is the median over rounds; the parent prints seconds and ratios
(ours / reference: below 1 is faster). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.oracles (stand-ins that let the official code import)


def _peak_rss_mb() -> float:
    """This process image's peak RSS. (ru_maxrss survives exec on Linux, so a child would
    report its parent's peak; VmHWM belongs to the current image only.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _image(seed: int = 0) -> np.ndarray:
    """A 1024 x 1024 RGB test image with structure (blobs on a gradient), uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:1024, 0:1024]
    img = 40 + 0.05 * xx
    for _ in range(30):
        cy, cx, r = rng.uniform(0, 1024), rng.uniform(0, 1024), rng.uniform(20, 90)
        img = img + 120 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
    img = img + rng.normal(0, 8, img.shape)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _time(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


POINT = np.array([[512, 400]])
BOXES = np.array([[40 + 15 * i, 30 + 12 * i, 400 + 10 * i, 500 + 8 * i] for i in range(50)], float)


def worker_ours(ckpt: str, repeats: int, prompts: bool) -> dict:
    from napari_sam_hq.engine import SamHQPredictor
    from napari_sam_hq.model import load_model

    predictor = SamHQPredictor(load_model(ckpt, device="cpu"))
    img = _image()
    out = {"set_image": _time(lambda: predictor.set_image(img), repeats)}
    if prompts:
        out["one_point"] = _time(lambda: predictor.predict(POINT, np.array([1])), 5 * repeats)
        out["boxes_50"] = _time(lambda: predictor.predict_batch(boxes=BOXES), repeats)
    return out


def worker_official(ckpt: str, name: str, repeats: int, prompts: bool) -> dict:
    from tests.oracles import import_official, refresh_official

    sah = import_official()
    model = sah.sam_model_registry[name]()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    refresh_official(model)
    predictor = sah.SamPredictor(model)
    img = _image()
    with torch.inference_mode():
        out = {"set_image": _time(lambda: predictor.set_image(img), repeats)}
        if prompts:
            out["one_point"] = _time(
                lambda: predictor.predict(POINT, np.array([1]), multimask_output=False), 5 * repeats
            )
            boxes = predictor.transform.apply_boxes_torch(torch.as_tensor(BOXES, dtype=torch.float), img.shape[:2])

            def batch():
                masks, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
                masks.numpy()

            out["boxes_50"] = _time(batch, repeats)
    return out


def worker_transformers(ckpt_dir: str, repeats: int) -> dict:
    from transformers import SamHQModel, SamHQProcessor  # noqa: F401 - import check

    model = SamHQModel.from_pretrained(ckpt_dir).eval()
    img = torch.as_tensor(_image()).permute(2, 0, 1)[None].float()
    pixel = (img / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    with torch.inference_mode():
        t_embed = _time(lambda: model.get_image_embeddings(pixel), repeats)
        emb = model.get_image_embeddings(pixel)
        pts = torch.tensor([[[[512.0, 400.0]]]])
        labels = torch.tensor([[[1]]])

        def one():
            out = model(
                image_embeddings=emb[0],
                intermediate_embeddings=emb[1],
                input_points=pts,
                input_labels=labels,
                multimask_output=False,
            )
            return torch.nn.functional.interpolate(out.pred_masks[0], (1024, 1024), mode="bilinear") > 0

        t_one = _time(one, 5 * repeats)
    return {"set_image": t_embed, "one_point": t_one}


def run_worker(script: str, args: list[str]) -> dict | None:
    """Run ``script --worker ...`` in a fresh process; its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        print(f"  ({args[1]} failed: {reason})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run(args: list[str]) -> dict | None:
    return run_worker(__file__, args)


def _make_checkpoints(tmp: Path, name: str) -> tuple[str, str | None]:
    """One seeded random checkpoint, as an official .pth and (ViT only) as an HF folder."""
    from napari_sam_hq.model.checkpoints import read_state_dict
    from tests.oracles import noisy_state_dict, official_model

    pth = tmp / f"sam_hq_{name}.pth"
    hf_dir = None
    if name != "vit_tiny":
        try:
            from tests.hf_export import save_hf_checkpoint

            hf_dir = str(save_hf_checkpoint(name, tmp / f"hf_{name}"))
            sd, _ = read_state_dict(hf_dir)  # the same weights under the official names
            torch.save(sd, pth)
            return str(pth), hf_dir
        except ImportError as err:  # no transformers: official and ours only
            print(f"  (no transformers column: {err})")
    torch.manual_seed(0)  # the init under the noise too: the same weights in every run
    torch.save(noisy_state_dict(official_model(name), seed=0), pth)
    return str(pth), hf_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=("vit_b", "vit_tiny"), default=("vit_b", "vit_tiny"))
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, ckpt, name, repeats, prompts = args.worker
        repeats, prompts = int(repeats), prompts == "1"
        if kind == "ours":
            result = worker_ours(ckpt, repeats, prompts)
        elif kind == "official":
            result = worker_official(ckpt, name, repeats, prompts)
        else:
            result = worker_transformers(ckpt, repeats)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return

    repeats = 1 if args.quick else 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU")
    with tempfile.TemporaryDirectory() as tmp:
        for name, prompts in (("vit_b", True), ("vit_tiny", False)):
            if name not in args.models:
                continue
            pth, hf_dir = _make_checkpoints(Path(tmp), name)
            rounds = 1 if args.quick else args.rounds
            print(f"\n{name}: {rounds} alternating rounds, median of {repeats} calls each (prompts x5), 1024 x 1024")
            runs: dict[str, list[dict]] = {"ours": [], "official": [], "transformers": []}
            for _ in range(rounds):
                for kind in ("ours", "official"):
                    out = _run(["--worker", kind, pth, name, str(repeats), str(int(prompts))])
                    if out:
                        runs[kind].append(out)
            if hf_dir:  # one round: it is a reference for speed only (its masks are wrong)
                out = _run(["--worker", "transformers", hf_dir, name, str(repeats), "1"])
                if out:
                    runs["transformers"].append(out)
            results = {
                kind: {k: statistics.median(r[k] for r in rs) for k in rs[0]} if rs else None
                for kind, rs in runs.items()
            }
            ours = results["ours"] or {}
            for metric in ("set_image", "one_point", "boxes_50", "peak_rss_mb"):
                if metric not in ours:
                    continue
                unit = "MB" if metric == "peak_rss_mb" else "s"
                line = f"  {metric:12s} ours {ours[metric]:8.3f} {unit}"
                for ref in ("official", "transformers"):
                    r = results.get(ref)
                    if r and metric in r:
                        line += f" | {ref} {r[metric]:8.3f} {unit} (ratio {ours[metric] / r[metric]:.2f})"
                print(line)


if __name__ == "__main__":
    main()

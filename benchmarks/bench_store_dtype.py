"""What float16 storage of embeddings does to masks, on real-size models (seeded random weights).

    python benchmarks/bench_store_dtype.py [--models vit_b vit_tiny] [--prompts 60]

For each model: one 1024 x 1024 image, its float32 embedding (image embedding + HQ
features, what the store keeps), the same rounded to float16 and back, then the same
prompts (single points, boxes, box + point) decoded from both. Prints the largest logit
difference, the score difference, and how many mask pixels flip, relative to the mask's
area. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _model(name: str):
    from napari_sam_hq.model import build_sam_hq, prepare_for_inference
    from napari_sam_hq.model.checkpoints import load_into
    from tests.oracles import noisy_state_dict, official_model

    sd = noisy_state_dict(official_model(name), seed=0)
    model = build_sam_hq(name)
    load_into(model, sd, "bench weights")
    return prepare_for_inference(model)


def main() -> None:
    from bench_model import _image

    from napari_sam_hq.engine import SamHQPredictor

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_tiny"])
    parser.add_argument("--prompts", type=int, default=60)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = _image()
    prompts = []
    for i in range(args.prompts):
        x, y = rng.uniform(60, 964, 2)
        w, h = rng.uniform(30, 200, 2)
        box = np.array([max(0, x - w / 2), max(0, y - h / 2), min(1023, x + w / 2), min(1023, y + h / 2)])
        kind = i % 3
        if kind == 0:
            prompts.append({"point_coords": [[x, y]], "point_labels": [1]})
        elif kind == 1:
            prompts.append({"box": box})
        else:
            prompts.append({"box": box, "point_coords": [[x, y]], "point_labels": [1]})
    print("model     | max |dlogit| | median max |dlogit| | max |dscore| | flipped px / mask area (max, median)")
    for name in args.models:
        model = _model(name)
        ref = SamHQPredictor(model)
        ref.set_image(image)
        full = ref.get_image_embedding(early=False)
        half = dataclasses.replace(
            full,
            image_embedding=full.image_embedding.astype(np.float16).astype(np.float32),
            hq_features=full.hq_features.astype(np.float16).astype(np.float32),
        )
        a, b = SamHQPredictor(model), SamHQPredictor(model)
        a.set_image_embedding(full)
        b.set_image_embedding(half)
        dlog, dscore, flips = [], [], []
        for p in prompts:
            pa, pb = a.predict(**p), b.predict(**p)
            dlog.append(float(np.abs(pa.low_res_logits - pb.low_res_logits).max()))
            dscore.append(float(np.abs(pa.scores - pb.scores).max()))
            area = max(1, int(pa.masks[0].sum()))
            flips.append(float((pa.masks[0] != pb.masks[0]).sum() / area))
        print(
            f"{name:9} | {max(dlog):12.2e} | {np.median(dlog):19.2e} | {max(dscore):12.2e} | "
            f"{max(flips):.2e}, {np.median(flips):.2e}"
        )
        del model, ref, a, b


if __name__ == "__main__":
    main()

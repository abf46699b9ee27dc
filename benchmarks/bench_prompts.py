"""Per-prompt time, ours against the official code, on several image sizes and prompt kinds.

    python benchmarks/bench_prompts.py                 # vit_b, 3 image sizes, 5 prompt kinds
    python benchmarks/bench_prompts.py --model vit_tiny --sizes 777x1203 --repeats 5

Both predictors live in one process on the same seeded random checkpoint (official format)
and hold the same image; every prompt is timed for ours and the official code alternately,
so the machine's drift (+-30% over minutes here) hits both alike. A timing is from prompt
to full-size boolean masks in numpy (the official ``predict``, ``multimask_output`` as
given). Printed: the median per prompt for each implementation and their ratio (ours /
official: below 1 is faster). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.oracles: stand-ins that let the official code import


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An h x w RGB uint8 image with structure (discs on a gradient)."""
    from tests.conftest import blob_image

    return blob_image(h, w, seed=seed)


def prompt_kinds(h: int, w: int) -> dict[str, dict]:
    """The parity tests' prompts (original pixels; boxes XYXY), plus a point with the previous
    answer as mask prompt."""
    from tests.model.test_parity_official import _prompt_cases

    kinds = _prompt_cases(h, w)
    kinds["point + mask"] = dict(kinds["positive point"], mask_input="previous")
    return kinds


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_tiny"])
    parser.add_argument("--sizes", default="1024x1024,777x1203,1500x2000", help="HxW,HxW,...")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per prompt and implementation")
    args = parser.parse_args()

    from napari_sam_hq.engine import SamHQPredictor
    from napari_sam_hq.model import build_sam_hq, prepare_for_inference
    from napari_sam_hq.model.checkpoints import load_into
    from tests.oracles import import_official, noisy_state_dict, official_model, refresh_official

    torch.manual_seed(0)
    official_net = official_model(args.model)
    sd = noisy_state_dict(official_net, seed=0)
    official_net.load_state_dict(sd)
    refresh_official(official_net)
    ours_net = build_sam_hq(args.model)
    load_into(ours_net, sd, "benchmark weights")
    prepare_for_inference(ours_net)
    official = import_official().SamPredictor(official_net)
    ours = SamHQPredictor(ours_net)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, float32 CPU, "
          f"median of {args.repeats} alternating calls per prompt")
    print(f"{'image':>11s} {'prompt':>20s} {'multimask':>9s} {'ours ms':>8s} {'official ms':>11s} {'ratio':>6s}")
    ratios: dict[str, list[float]] = {}
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        image = _image(h, w)
        with torch.inference_mode():
            official.set_image(image)
        ours.set_image(image)
        for kind, prompt in prompt_kinds(h, w).items():
            for multimask in (False, True):
                kw = dict(prompt)
                if kw.get("mask_input") == "previous":
                    kw["mask_input"] = ours.predict(**prompt_kinds(h, w)["box"]).low_res_logits[:1]
                def fo(kw=kw, multimask=multimask):
                    return official.predict(**kw, multimask_output=multimask)

                def fu(kw=kw, multimask=multimask):
                    return ours.predict(**kw, multimask_output=multimask)

                with torch.inference_mode():
                    fo(), fu()  # warm-up
                    t_o, t_u = [], []
                    for _ in range(args.repeats):
                        t_o.append(_timed(fo))
                        t_u.append(_timed(fu))
                mo, mu = statistics.median(t_o), statistics.median(t_u)
                ratios.setdefault(size, []).append(mu / mo)
                print(f"{size:>11s} {kind:>20s} {multimask!s:>9s} {1e3 * mu:8.1f} {1e3 * mo:11.1f} {mu / mo:6.3f}")
    print("\nmedian ratio per image size: " + ", ".join(f"{s} {statistics.median(r):.3f}" for s, r in ratios.items()))


if __name__ == "__main__":
    main()

"""Prompt change -> updated preview in the napari widget: vit_b, 1024 x 1024, CPU.

    xvfb-run -a python benchmarks/bench_widget.py [--model PATH_OR_NAME]

Without --model, a seeded random vit_b checkpoint in the official format is written to a
temporary folder (pretrained weights give the same timings). Prints the median and the
spread of the time from adding a point to the preview layer holding the new mask, with
the decoder running in its worker thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=15)
    args = parser.parse_args()

    import napari
    import torch

    from napari_sam_hq._napari import constants as C
    from tests.conftest import blob_image

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from tests.oracles import noisy_state_dict, official_model

            model = str(Path(tmp) / "sam_hq_vit_b.pth")
            torch.save(noisy_state_dict(official_model("vit_b"), seed=0), model)
        viewer = napari.Viewer(show=False)
        viewer.add_image(blob_image(1024, 1024, seed=0), name="image", rgb=True)
        _, widget = viewer.window.add_plugin_dock_widget("napari-sam-hq", "SAM-HQ")
        widget.settings.model_combo.setCurrentText(model)
        widget.settings.device_combo.setCurrentText("cpu")
        t = time.perf_counter()
        widget.compute_embeddings()
        widget.wait()
        print(f"load + embed (vit_b, 1024 x 1024): {time.perf_counter() - t:.1f} s")
        points = viewer.layers[C.POINTS_LAYER]
        rng = np.random.default_rng(0)
        times = []
        for i in range(args.prompts + 1):
            widget.clear_prompts()
            widget.wait()
            t = time.perf_counter()
            points.add(rng.uniform(100, 900, 2))
            widget.wait()  # the decode is done and the preview drawn
            if i:  # the first one warms up
                times.append(time.perf_counter() - t)
        ms = sorted(1000 * v for v in times)
        print(
            f"prompt -> preview: median {statistics.median(ms):.0f} ms, "
            f"min {ms[0]:.0f}, max {ms[-1]:.0f} ms over {len(ms)} prompts"
        )
        viewer.close()


if __name__ == "__main__":
    main()

"""Adapting the decoder on stored embeddings: seconds per step and per epoch, and how soon a
useful adaptation is reached, on a problem with a known answer.

    python benchmarks/bench_train.py --model vit_b --minutes 5
    python benchmarks/bench_train.py --model vit_tiny --minutes 2

Setup (seeded random weights in the official layout, as everywhere here): 20 synthetic
1024 x 1024 images of touching cells, encoded once into an on-disk store (timed apart:
adaptation reuses what the widget or ``embed`` stored). The labels are made by a *teacher*:
the same model with its HQ parts perturbed, answering each cell's box (10 per image, 200
objects). The student (the unperturbed model) is trained on them within the time budget,
and the held-out mean IoU of its HQ mask is compared with the teacher's own (the ceiling).
Prints the figures, the held-out IoU after each epoch with the time it took, and when 90%
of the run's held-out gain was reached.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.oracles (seeded weights)


def cells(seed: int, size: int = 1024, n: int = 10) -> tuple[np.ndarray, list[np.ndarray]]:
    """A uint8 image of ``n`` touching ellipses (blurred, noisy) and each one's XYXY box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size), 40.0)
    boxes = []
    for i in range(n):
        cy, cx = rng.uniform(100, size - 100, 2)
        a, b, t = rng.uniform(40, 90), rng.uniform(30, 60), rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / a
        v = (-(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)) / b
        inside = u * u + v * v <= 1
        img[inside] = 150 + 30 * (i % 3)
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        boxes.append(np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float64))
    img = ndimage.gaussian_filter(img, 2) + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_tiny"])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    from napari_sam_hq.engine import EmbeddingStore, SamHQPredictor, SegmentationSession
    from napari_sam_hq.engine.adaptation.training import (
        TrainingImage,
        TrainSettings,
        apply_state,
        iter_train,
        trainable_parameters,
    )
    from napari_sam_hq.model import build_sam_hq, prepare_for_inference
    from napari_sam_hq.model.checkpoints import load_into
    from tests.oracles import noisy_state_dict

    torch.manual_seed(0)
    model = build_sam_hq(args.model)
    load_into(model, noisy_state_dict(model, seed=0), "seeded weights")
    model = prepare_for_inference(model)
    teacher = apply_state(model, {})
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in trainable_parameters(teacher, "hq").values():
            p.add_(p.std() * torch.randn(p.shape, generator=gen))

    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore(Path(tmp) / "store.zarr")
        t0 = time.perf_counter()
        sessions = []
        for i in range(args.images):
            image, boxes = cells(i)
            session = SegmentationSession(model, image, store=store)
            list(session.iter_embed())
            sessions.append((session, boxes))
        encode_s = time.perf_counter() - t0
        # the labels: the teacher's HQ masks for each box (what the student can learn exactly)
        t0 = time.perf_counter()
        data, pred = [], SamHQPredictor(teacher)
        for i, (session, boxes) in enumerate(sessions):
            [(_, entry)] = session.entry_keys(())
            emb = store.get(session.model_id, entry)  # read back from the store, as adaptation does
            pred.set_image_embedding(emb)
            masks = pred.predict_batch(boxes=np.stack(boxes), hq_token_only=True).masks[:, 0]
            keep = [j for j in range(len(boxes)) if masks[j].sum() > 200]
            data.append(TrainingImage(emb, [masks[j] for j in keep], f"cells{i}", [boxes[j] for j in keep]))
        data_s = time.perf_counter() - t0
        n_obj = sum(len(d.objects) for d in data)
        print(f"{args.model}: {args.images} images of 1024 x 1024, {n_obj} objects; encoding {encode_s:.0f} s "
              f"(once, into the store), labels + reading the store {data_s:.1f} s")

        def ceiling() -> float:  # the teacher's own held-out IoU on the same split
            run = iter_train(teacher, data, TrainSettings(epochs=1, steps_per_epoch=1, batch_objects=1, lr=1e-12,
                                                          prompts=("box",), seed=0))
            try:
                while True:
                    next(run)
            except StopIteration as stop:
                return stop.value.iou_before_hq_only

        top = ceiling()
        settings = TrainSettings(epochs=args.epochs, minutes=args.minutes, batch_objects=args.batch, lr=3e-3,
                                 prompts=("box",), seed=0, patience=args.epochs)
        run = iter_train(model, data, settings)
        start = time.perf_counter()
        step_times, last, epochs = [], start, []
        try:
            while True:
                step = next(run)
                now = time.perf_counter()
                if step.val_iou is None:
                    step_times.append(now - last)
                else:
                    epochs.append((step.epoch, now - start, step.val_iou))
                last = now
        except StopIteration as stop:
            result = stop.value
    per_epoch = np.median(step_times) * max(1, -(-result.train_objects // args.batch))
    print(f"step ({args.batch} objects): median {np.median(step_times):.2f} s; epoch ({result.train_objects} "
          f"training objects): {per_epoch:.0f} s; {result.steps} steps in {result.seconds:.0f} s")
    before = result.iou_before_hq_only
    print(f"held-out IoU, SAM + HQ output: {result.iou_before:.3f} -> {result.iou_after:.3f}; HQ mask: {before:.3f} "
          f"-> {result.iou_after_hq_only:.3f} (teacher, the ceiling: {top:.3f})")
    for epoch, seconds, iou in epochs:
        print(f"  epoch {epoch:3d} at {seconds:6.0f} s: held-out IoU (SAM + HQ) {iou:.3f}")
    # useful: 90% of the held-out gain of the whole run (the teacher is only a reference: at the
    # decoder's 256 grid its own masks score below what the student reaches)
    base, best = result.iou_before, max([result.iou_before] + [iou for _, _, iou in epochs])
    reached = next((s for _, s, iou in epochs if iou >= base + 0.9 * (best - base)), float("nan"))
    print(f"90% of the held-out gain (SAM + HQ {base:.3f} -> {best:.3f}) reached after {reached:.0f} s "
          f"(budget {args.minutes:g} min)")

if __name__ == "__main__":
    main()

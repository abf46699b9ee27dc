"""A small deterministic stand-in for ``SamHQPredictor``, for tests where logic is the subject.

It segments by rule: the bright (> 127 after the engine's intensity mapping) connected
component under the first positive point (or the box centre), limited to the box grown
by a quarter of its size; negative points remove their components. It goes through the
real frames: the engine's resize to the 1024 model input, 256 x 256 low-res logits (its
"embedding" is the model-input grey image packed into the 1 x 256 x 64 x 64 shape), and
``Frames.logits_to_original`` back. So tile origins, scales and store round trips are
exercised exactly as with SAM-HQ, and the right answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from napari_sam_hq.engine.prediction.predictor import BatchPrediction, ImageEmbedding
from napari_sam_hq.engine.prediction.transforms import Frames, resize_longest_side, to_model_rgb


@dataclass
class FakeModel:
    name: str = "fake"
    checkpoint_id: str = "rule-1"
    encodes: int = 0  # how many images were encoded (tests count store hits with it)
    mask_threshold: float = 0.0


class FakePredictor:
    limit_to_box = True  # False: the whole component under the prompt, wherever it goes

    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self._grey: np.ndarray | None = None
        self._frames: Frames | None = None
        self.windows_seen = 0  # prompts decoded with a window

    def iter_set_image(self, image, *, contrast_limits=None, keep_early=True):  # no early feature here
        rgb = to_model_rgb(image, contrast_limits=contrast_limits)
        self._frames = Frames.for_image(rgb.shape[0], rgb.shape[1])
        small = resize_longest_side(rgb).astype(np.float32).mean(axis=-1)
        grey = np.zeros((1024, 1024), np.float32)
        grey[: small.shape[0], : small.shape[1]] = small
        yield 0.5
        self._grey = grey
        self.model.encodes += 1
        yield 1.0

    def set_image(self, image, *, contrast_limits=None, keep_early=True):
        for _ in self.iter_set_image(image, contrast_limits=contrast_limits, keep_early=keep_early):
            pass

    def get_image_embedding(self, *, dtype=np.float32, early=True, hq=True) -> ImageEmbedding:
        assert self._grey is not None and self._frames is not None
        return ImageEmbedding(
            image_embedding=self._grey.reshape(1, 256, 64, 64).astype(dtype),
            early_feature=None,
            original_size=self._frames.original_size,
            input_size=self._frames.input_size,
            model_name=self.model.name,
            checkpoint_id=self.model.checkpoint_id,
            hq_features=np.zeros((1, 32, 256, 256), dtype),
        )

    def set_image_embedding(self, emb: ImageEmbedding) -> None:
        self._grey = np.asarray(emb.image_embedding, np.float32).reshape(1024, 1024)
        self._frames = Frames.for_image(*emb.original_size)

    def _require_image(self) -> Frames:
        assert self._frames is not None
        return self._frames

    def predict_logits(self, point_coords, point_labels, *, min_score=-np.inf, multimask_output=True,
                       hq_token_only=False, chunk=4):
        out = self.predict_batch(point_coords=point_coords, point_labels=point_labels)
        keep = np.nonzero(out.scores[:, 0] > min_score)[0]
        return (torch.from_numpy(out.low_res_logits[keep, 0]), torch.from_numpy(out.scores[keep, 0]), keep)

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      multimask_output=False, hq_token_only=False, windows=None) -> BatchPrediction:
        frames = self._frames
        assert frames is not None and self._grey is not None
        b = len(boxes) if boxes is not None else len(point_coords)
        fg = self._grey > 127
        fg[frames.input_size[0]:, :] = False
        fg[:, frames.input_size[1]:] = False
        comps, _ = ndimage.label(fg)
        lows, scores = [], []
        for i in range(b):
            pts = None if point_coords is None else frames.coords_to_input(point_coords[i])
            labels = None if point_labels is None else np.asarray(point_labels[i])
            box = None if boxes is None else frames.boxes_to_input(boxes[i])
            if pts is not None and (labels == 1).any():
                x, y = pts[labels == 1][0]
            else:
                x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            c = comps[int(np.clip(round(y), 0, 1023)), int(np.clip(round(x), 0, 1023))]
            mask = comps == c if c else np.zeros_like(fg)
            if pts is not None:
                for (px, py), lab in zip(pts, labels, strict=True):
                    n = comps[int(np.clip(round(py), 0, 1023)), int(np.clip(round(px), 0, 1023))]
                    if lab == 0 and n:
                        mask &= comps != n
            if box is not None and self.limit_to_box:
                gx, gy = (box[2] - box[0]) / 4 + 2, (box[3] - box[1]) / 4 + 2
                keep = np.zeros_like(mask)
                rows = slice(int(max(0, box[1] - gy)), int(box[3] + gy) + 1)
                keep[rows, int(max(0, box[0] - gx)) : int(box[2] + gx) + 1] = True
                mask &= keep
            logits = np.where(mask, 40.0, -40.0).astype(np.float32)  # sharp: stable masks
            lows.append(logits.reshape(256, 4, 256, 4).mean(axis=(1, 3)))
            scores.append(0.9 if mask.any() else 0.0)
        low = np.stack(lows)[:, None]
        full = frames.logits_to_original(torch.from_numpy(low)).numpy() > 0
        if windows is not None:  # as SamHQPredictor: empty outside the window
            self.windows_seen += len(windows)
            for m, (r0, r1, c0, c1) in zip(full, frames.window_pixels(windows).tolist(), strict=True):
                inside = np.zeros(m.shape[-2:], bool)
                inside[r0:r1, c0:c1] = True
                m &= inside
        return BatchPrediction(masks=full, scores=np.array(scores, np.float32)[:, None], low_res_logits=low)


def ellipsoid_volume(shape=(24, 160, 160), blobs=(((12, 60, 60), (8, 30, 24)),), *, noise=8.0, seed=0):
    """uint8 volume with bright ellipsoids (centre zyx, semi-axes zyx), blurred and noisy;
    returns (image, ground-truth labels) with label i + 1 for blob i."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = np.zeros(shape, np.uint16)
    for i, ((cz, cy, cx), (az, ay, ax)) in enumerate(blobs):
        inside = ((zz - cz) / az) ** 2 + ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1
        truth[inside & (truth == 0)] = i + 1
    img = ndimage.gaussian_filter(np.where(truth > 0, 200.0, 40.0), sigma=(0, 1, 1))
    img = np.clip(img + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
    return img, truth


def disc_image(shape, discs, *, seed=0, dtype=np.uint8, low=50, high=210, noise=6.0):
    """Bright discs ``(cy, cx, r)`` on a dark noisy background; returns (image, truth labels)
    with label i + 1 for disc i."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    truth = np.zeros(shape, np.uint32)
    for i, (cy, cx, r) in enumerate(discs):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i + 1
    image = np.where(truth > 0, high, low) + rng.normal(0, noise, shape)
    return image.clip(0, np.iinfo(dtype).max).astype(dtype), truth


def paint_seeds(shape, seeds, dtype=np.uint32) -> np.ndarray:
    """Labels with each seed mask ``{label: {slice: mask}}`` painted in."""
    labels = np.zeros(shape, dtype)
    for label, planes in seeds.items():
        for z, mask in planes.items():
            labels[z][mask] = label
    return labels

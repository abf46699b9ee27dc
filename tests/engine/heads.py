"""Stand-in instance heads for tests where the logic around the head is the subject: their
maps are computed by rule from the image they are given (bright connected components are
the objects), so the right instances are known."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from napari_sam_hq.engine.automatic.instances import instance_targets


class RuleHead(torch.nn.Module):
    """Maps of the bright (> 0.5) components of the tile it sees, as logits. ``erode`` pixels
    taken off every object (a head with poor boundaries); ``split`` gives every object two
    seeds (its centre map peaks at both ends of its widest axis)."""

    def __init__(self, *, erode: int = 0, split: bool = False) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # predict_maps reads the dtype from it
        self.erode, self.split = erode, split
        self.calls = 0

    def forward(self, image: torch.Tensor, embedding: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        grey = image[0].mean(0).numpy()
        labels, _ = ndimage.label(grey > 0.5)
        if self.erode:
            out = np.zeros_like(labels)
            for i in range(1, labels.max() + 1):
                out[ndimage.binary_erosion(labels == i, iterations=self.erode)] = i
            labels = out
        maps = instance_targets(labels)
        if self.split:
            for i in range(1, labels.max() + 1):
                ys, xs = np.nonzero(labels == i)
                if len(xs) < 40:
                    continue
                far = np.argsort(xs)
                maps[1][ys, xs] = np.minimum(maps[1][ys, xs], 0.3)
                for j in (far[: len(far) // 8], far[-len(far) // 8 :]):
                    maps[1][ys[j], xs[j]] = 0.9
                    maps[2][ys[j], xs[j]] = np.maximum(maps[2][ys[j], xs[j]], 0.5)
        p = np.clip(maps, 1e-4, 1 - 1e-4)
        return torch.from_numpy(np.log(p / (1 - p)))[None].float()

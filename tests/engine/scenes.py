"""Synthetic microscopy scenes with a known answer, for automatic instance segmentation:
touching cells of varied size, shape and brightness (each dimmer towards its edge, as a
stained cytoplasm is), blur, noise and an uneven background."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def cell_scene(shape: tuple[int, int] = (256, 256), *, n_cells: int | None = None, seed: int = 0,
               radius: tuple[float, float] = (7.0, 18.0)) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 H x W, labels uint32 H x W)``. Cells are ellipses (axes ratio up to 1.6,
    any orientation) placed so that many touch; where two overlap, each pixel goes to the cell
    whose centre is nearer in its own elliptical metric, so touching cells share a border."""
    rng = np.random.default_rng(seed)
    h, w = shape
    if n_cells is None:
        n_cells = int(h * w / (np.mean(radius) ** 2 * 7))
    centres, radii = [], []
    for _ in range(n_cells * 30):
        if len(centres) == n_cells:
            break
        r = rng.uniform(*radius)
        c = rng.uniform([r, r], [h - r, w - r])
        if all(np.hypot(*(c - c2)) > 0.85 * (r + r2) for c2, r2 in zip(centres, radii, strict=True)):
            centres.append(c)
            radii.append(r)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    best = np.full(shape, np.inf, np.float32)
    labels = np.zeros(shape, np.uint32)
    for i, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True), start=1):
        aspect, angle = rng.uniform(1.0, 1.6), rng.uniform(0, np.pi)
        a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        d = np.sqrt((u / a) ** 2 + (v / b) ** 2)  # 1 on the ellipse
        take = (d <= 1) & (d < best)
        labels[take], best[take] = i, d[take]
    image = 30 + 25 * (xx / w) + 15 * ndimage.gaussian_filter(rng.normal(0, 1, shape), 20) * 4
    brightness = rng.uniform(110, 220, len(centres) + 1)
    inner = np.clip(1 - best, 0, 1)  # 1 at the centre, 0 at the edge
    cell = labels > 0
    image[cell] = (brightness[labels] * (0.55 + 0.45 * np.sqrt(inner)))[cell]
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 6, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels

"""Sample images that need no download: a real micrograph and a generated 3D stack of cells."""

from __future__ import annotations

import numpy as np


def cells_2d():
    """Cells imaged by scanning electron microscopy (scikit-image's ``cell``, shipped with it)."""
    from skimage import data

    return [(data.cell(), {"name": "cells (2D)"})]


def cells_3d(shape: tuple[int, int, int] = (24, 256, 256), n_cells: int = 12, seed: int = 0) -> list:
    """A Z x Y x X stack of blurred ellipsoidal 'nuclei' with noise (uint16, like a camera)."""
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=np.float32)
    vol = np.zeros(shape, np.float32)
    for _ in range(n_cells):
        c = rng.uniform([3, 30, 30], [shape[0] - 3, shape[1] - 30, shape[2] - 30])
        r = rng.uniform([3, 14, 14], [7, 30, 30])
        inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
        vol[inside] = rng.uniform(0.6, 1.0)
    vol = gaussian(vol, sigma=(1, 2, 2), preserve_range=True)
    vol = 300 + 2500 * vol + rng.normal(0, 60, shape)
    return [(np.clip(vol, 0, 65535).astype(np.uint16), {"name": "cells (3D)"})]

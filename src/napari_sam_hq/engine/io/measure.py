"""Per-object measurements of a labels image, one plane at a time.

Columns (those of scikit-image's ``regionprops_table``, which the tests hold this to):
``label``; ``area`` (2D, pixels) or ``volume`` (3D, voxels); ``centroid-0`` ... (data
order: slices, then y, then x); ``bbox-0`` ... (min corner, then max corner, exclusive);
``equivalent_diameter`` (of a circle/sphere with the same area/volume); and with an
intensity image ``intensity_mean``, ``intensity_min``, ``intensity_max``, ``intensity_std``
(population). Units are pixels unless ``spacing`` (per axis) is given: then area/volume,
centroid and diameter are physical, the bbox stays in pixels.

Labels of any size: a volume is read one plane at a time (a zarr on disk, a dask array, a
memory-mapped TIFF are never loaded whole; a 1000 x 4096 x 4096 uint32 volume is 67 GB),
and every measure is a sum, a minimum or a maximum over the planes; the intensity spread is
combined plane by plane with Chan et al.'s pairwise formula (no sum of squares to cancel).
The image is read only on planes that hold labels.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from ...model.steps import exhaust


def measure(labels: Any, image: Any = None, *, spacing: tuple[float, ...] | None = None):
    """A pandas DataFrame with one row per label (module docstring)."""
    return exhaust(iter_measure(labels, image, spacing=spacing))


def iter_measure(
    labels: Any, image: Any = None, *, spacing: tuple[float, ...] | None = None
) -> Generator[float, None, Any]:
    """``measure`` as a generator: yields the fraction of planes done, returns the table.

    ``labels`` ``H x W`` or ``Z x H x W`` (numpy, zarr, dask, anything sliced to numpy),
    integers (or bool); ``image`` the same shape (one channel) or None. The input is checked
    here, at the call (a ``ValueError`` that names the problem); the planes are read as the
    generator runs.
    """
    dtype = np.dtype(labels.dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype.kind == "b"):
        raise ValueError(f"labels must be an integer image, got {dtype}")
    shape = tuple(int(s) for s in labels.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {shape}")
    if image is not None and tuple(int(s) for s in image.shape) != shape:
        raise ValueError(
            f"the image has shape {tuple(image.shape)}, the labels {shape}: measure intensities on "
            "the image the labels were made from (one channel)"
        )
    scale = np.ones(len(shape)) if spacing is None else np.asarray(spacing, float)
    if scale.shape != (len(shape),):
        raise ValueError(f"spacing needs one value per axis ({len(shape)}), got {tuple(spacing)}")
    return _planes(labels, image, shape, scale)


def _planes(labels: Any, image: Any, shape: tuple[int, ...], scale: np.ndarray) -> Generator[float, None, Any]:
    import pandas as pd

    acc = _Accumulator(len(shape), image is not None)
    planes = shape[0] if len(shape) == 3 else 1
    for z in range(planes):
        plane = np.asarray(labels[z] if len(shape) == 3 else labels[...])
        if plane.any():
            values = None
            if image is not None:
                values = np.asarray(image[z] if len(shape) == 3 else image[...])
            acc.add_plane(plane, values, z)
        yield (z + 1) / planes
    return pd.DataFrame(acc.table(scale))


class _Accumulator:
    """Per-label sums, minima and maxima, merged plane by plane (rows in order of first sight)."""

    def __init__(self, ndim: int, intensity: bool) -> None:
        self.ndim = ndim
        self.intensity = intensity
        self.rows: dict[int, int] = {}  # label -> row of the arrays below
        self.count = np.zeros(0, np.int64)
        self.coord_sum = np.zeros((0, ndim))
        self.lo = np.zeros((0, ndim), np.int64)
        self.hi = np.zeros((0, ndim), np.int64)
        self.mean = np.zeros(0)
        self.m2 = np.zeros(0)
        self.vmin: np.ndarray | None = None
        self.vmax: np.ndarray | None = None

    def _rows_for(self, ids: np.ndarray) -> np.ndarray:
        new = [int(i) for i in ids.tolist() if int(i) not in self.rows]
        if new:
            start = len(self.rows)
            for k, i in enumerate(new):
                self.rows[i] = start + k
            grow = len(new)
            self.count = np.concatenate([self.count, np.zeros(grow, np.int64)])
            self.coord_sum = np.concatenate([self.coord_sum, np.zeros((grow, self.ndim))])
            self.lo = np.concatenate([self.lo, np.full((grow, self.ndim), np.iinfo(np.int64).max)])
            self.hi = np.concatenate([self.hi, np.full((grow, self.ndim), -1)])
            self.mean = np.concatenate([self.mean, np.zeros(grow)])
            self.m2 = np.concatenate([self.m2, np.zeros(grow)])
            if self.vmin is not None:
                self.vmin = np.concatenate([self.vmin, np.zeros(grow, self.vmin.dtype)])
                self.vmax = np.concatenate([self.vmax, np.zeros(grow, self.vmax.dtype)])
        return np.array([self.rows[int(i)] for i in ids.tolist()], np.int64)

    def add_plane(self, plane: np.ndarray, values: np.ndarray | None, z: int) -> None:
        """One ``H x W`` plane of labels (slice ``z`` of a volume) and its intensities."""
        w = plane.shape[1]
        flat = plane.ravel()
        where = np.flatnonzero(flat)
        found = flat[where]
        order = np.argsort(found, kind="stable")  # by label; pixel order kept within a label
        found, where = found[order], where[order]
        starts = np.flatnonzero(np.r_[True, found[1:] != found[:-1]])
        ends = np.r_[starts[1:], found.size]
        ids = found[starts]
        n = ends - starts
        ys, xs = np.divmod(where, w)  # ys ascend within each label (row-major pixel order)
        rows = self._rows_for(ids)
        first_sight = self.count[rows] == 0
        lo = [ys[starts], np.minimum.reduceat(xs, starts)]
        hi = [ys[ends - 1], np.maximum.reduceat(xs, starts)]
        sums = [np.add.reduceat(ys, starts).astype(float), np.add.reduceat(xs, starts).astype(float)]
        if self.ndim == 3:
            lo, hi = [np.full(ids.size, z), *lo], [np.full(ids.size, z), *hi]
            sums = [n * float(z), *sums]
        self.coord_sum[rows] += np.stack(sums, axis=1)
        self.lo[rows] = np.minimum(self.lo[rows], np.stack(lo, axis=1))
        self.hi[rows] = np.maximum(self.hi[rows], np.stack(hi, axis=1))
        if values is not None:
            v = values.ravel()[where]
            if self.vmin is None:
                self.vmin = np.zeros(len(self.count), v.dtype)
                self.vmax = np.zeros(len(self.count), v.dtype)
            vmin, vmax = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
            self.vmin[rows] = np.where(first_sight, vmin, np.minimum(self.vmin[rows], vmin))
            self.vmax[rows] = np.where(first_sight, vmax, np.maximum(self.vmax[rows], vmax))
            v = v.astype(np.float64)
            mean_b = np.add.reduceat(v, starts) / n
            m2_b = np.add.reduceat((v - np.repeat(mean_b, n)) ** 2, starts)
            # Chan et al.: merge (count, mean, M2) of the planes so far with this plane's
            n_a, mean_a = self.count[rows], self.mean[rows]
            total = n_a + n
            delta = mean_b - mean_a
            self.mean[rows] = mean_a + delta * n / total
            self.m2[rows] = self.m2[rows] + m2_b + delta**2 * n_a * n / total
        self.count[rows] += n

    def table(self, scale: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.fromiter(self.rows.keys(), np.int64, len(self.rows))
        order = np.argsort(ids, kind="stable")
        ids, rows = ids[order], np.fromiter(self.rows.values(), np.int64, len(self.rows))[order]
        count = self.count[rows]
        size = count * float(np.prod(scale))
        out: dict[str, np.ndarray] = {"label": ids, "area" if self.ndim == 2 else "volume": size}
        centroid = self.coord_sum[rows] / count[:, None] * scale
        for a in range(self.ndim):
            out[f"centroid-{a}"] = centroid[:, a]
        for a in range(self.ndim):
            out[f"bbox-{a}"] = self.lo[rows, a]
        for a in range(self.ndim):
            out[f"bbox-{a + self.ndim}"] = self.hi[rows, a] + 1
        if self.ndim == 2:
            out["equivalent_diameter"] = np.sqrt(4 * size / np.pi)
        else:
            out["equivalent_diameter"] = np.cbrt(6 * size / np.pi)
        if self.intensity:
            out["intensity_mean"] = self.mean[rows]
            out["intensity_min"] = self.vmin[rows] if self.vmin is not None else np.zeros(0)
            out["intensity_max"] = self.vmax[rows] if self.vmax is not None else np.zeros(0)
            out["intensity_std"] = np.sqrt(self.m2[rows] / count)
        return out

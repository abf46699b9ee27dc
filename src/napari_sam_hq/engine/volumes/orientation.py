"""Which plane of a volume is segmented: any two data axes, the others slicing axes.

Frames: the *data frame* is the image's own axis order (spatial axes only; an RGB
colour axis stays last and is never a plane axis). An ``Orientation`` names the two
*plane axes* (ascending data axes: rows, then columns) and makes the rest, in data
order, the *slicing axes*. The *oriented frame* is ``(*slicing axes, rows, cols)``: a
slice key indexes the slicing axes, a plane is rows x cols, prompts are (x = column,
y = row). The default orientation (the last two axes) is the identity.

Embeddings need no orientation in their keys: the store keys them by the pixels the
encoder saw, so an XZ plane and a YX plane never collide, and returning to an
orientation finds its embeddings again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..masks import SeedPlane


@dataclass(frozen=True)
class Orientation:
    """``ndim`` spatial axes, of which ``plane_axes`` (two data axes) form the plane."""

    ndim: int
    plane_axes: tuple[int, int]

    def __post_init__(self) -> None:
        a, b = self.plane_axes
        if self.ndim < 2 or not (0 <= a < self.ndim and 0 <= b < self.ndim) or a == b:
            raise ValueError(f"plane axes {self.plane_axes} are not two distinct axes of {self.ndim} spatial axes")
        object.__setattr__(self, "plane_axes", (min(a, b), max(a, b)))

    @classmethod
    def default(cls, ndim: int) -> Orientation:
        return cls(ndim, (ndim - 2, ndim - 1))

    @property
    def is_default(self) -> bool:
        return self.plane_axes == (self.ndim - 2, self.ndim - 1)

    @property
    def lead_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(self.ndim) if a not in self.plane_axes)

    def oriented_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(*slicing sizes, rows, cols)`` of a data-frame spatial ``shape``."""
        return tuple(shape[a] for a in (*self.lead_axes, *self.plane_axes))

    def plane_index(self, key: tuple[int, ...]) -> tuple:
        """The data-frame index of the plane at slice ``key`` (ints on the slicing axes)."""
        index: list[Any] = [slice(None)] * self.ndim
        for axis, k in zip(self.lead_axes, key, strict=True):
            index[axis] = int(k)
        return tuple(index)

    def region(self, key: tuple[int, ...], box: tuple[int, int, int, int]) -> tuple[slice, ...]:
        """The data-frame box of rows ``[y0, y1)`` x cols ``[x0, x1)`` of the plane at ``key``
        (one deep on the slicing axes)."""
        index = [slice(0, 0)] * self.ndim
        for axis, k in zip(self.lead_axes, key, strict=True):
            index[axis] = slice(int(k), int(k) + 1)
        y0, x0, y1, x1 = box
        index[self.plane_axes[0]] = slice(int(y0), int(y1))
        index[self.plane_axes[1]] = slice(int(x0), int(x1))
        return tuple(index)

    def to_region(self, plane: np.ndarray) -> np.ndarray:
        """A rows x cols array in the shape of a ``region`` (size-1 slicing axes inserted)."""
        return np.expand_dims(plane, self.lead_axes) if self.lead_axes else plane

    def seed_plane(self, key: tuple[int, ...]) -> SeedPlane:
        """The orientation-free name of the plane at slice ``key``: ``((axis, index), ...)``."""
        return tuple((axis, int(k)) for axis, k in zip(self.lead_axes, key, strict=True))

    def key_of(self, plane: SeedPlane) -> tuple[int, ...] | None:
        """The slice key of a named plane in this orientation (``None``: another orientation)."""
        fixed = dict(plane)
        if set(fixed) != set(self.lead_axes):
            return None
        return tuple(fixed[a] for a in self.lead_axes)

    def view(self, data: Any, *, rgb: bool = False) -> Any:
        """``data`` seen in the oriented frame (itself for the default orientation)."""
        return data if self.is_default else OrientedArray(data, self, rgb=rgb)


class OrientedArray:
    """A read-only view of ``data`` in an ``Orientation``'s frame: ``view[key]`` reads one
    plane (rows x cols, x C for RGB) of a numpy, zarr or dask array, nothing else."""

    def __init__(self, data: Any, orientation: Orientation, *, rgb: bool = False) -> None:
        self.data = data
        self.orientation = orientation
        self.rgb = rgb
        spatial = tuple(int(s) for s in (data.shape[:-1] if rgb else data.shape))
        self.shape = orientation.oriented_shape(spatial) + ((int(data.shape[-1]),) if rgb else ())
        self.dtype = data.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[int, ...]) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        n_lead = len(self.orientation.lead_axes)
        if len(key) != n_lead or not all(isinstance(k, (int, np.integer)) for k in key):
            raise IndexError(f"an oriented view is read one plane at a time (a key of {n_lead} ints), got {key}")
        return np.asarray(self.data[self.orientation.plane_index(key)])

    def region(self, key: tuple[int, ...], rows: slice, cols: slice) -> np.ndarray:
        """``self[key][rows, cols]``, reading only that region of the data."""
        index = list(self.orientation.plane_index(tuple(int(k) for k in key)))
        a, b = self.orientation.plane_axes
        index[a], index[b] = rows, cols
        return np.asarray(self.data[tuple(index)])

"""Overlapping tiles for planes larger than the model input, and which tile answers a prompt.

Frames: a *plane* is ``H x W`` pixels (rows y, columns x); a ``Tile`` is the half-open
box ``[y0, y1) x [x0, x1)`` of the plane. Prompts stay in plane (x, y) pixels; the tile
subtracts its origin.

Rules:
- A plane whose longest side is at most ``tile_size`` is one tile: the whole plane (the
  untiled path, identical to ``set_image`` on the plane).
- A larger plane gets a grid of ``tile_size`` tiles overlapping by at least ``overlap``
  pixels, spread evenly so the last one ends at the border. Every object whose extent is
  at most ``overlap`` pixels fits wholly inside at least one tile.
- Plus one *coarse* tile: the whole plane, resized to the model input like an untiled
  image (lower resolution). It answers objects that fit in no tile.
- A prompt goes to the tile that contains its extent with the largest margin to the
  tile's inner edges (edges on the plane border do not count: nothing is cut there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """``[y0, y1) x [x0, x1)`` of a plane; ``coarse`` marks the whole-plane tile of a tiled plane."""

    y0: int
    x0: int
    y1: int
    x1: int
    coarse: bool = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.y0, self.x0, self.y1, self.x1)

    @property
    def origin_xy(self) -> np.ndarray:
        return np.array([self.x0, self.y0], dtype=np.float64)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def contains(self, extent: tuple[float, float, float, float]) -> bool:
        """``extent`` XYXY plane pixels (centres) lies inside the tile."""
        x0, y0, x1, y1 = extent
        return self.x0 - 0.5 <= x0 and x1 <= self.x1 - 0.5 and self.y0 - 0.5 <= y0 and y1 <= self.y1 - 0.5

    def margin(self, extent: tuple[float, float, float, float], shape_hw: tuple[int, int]) -> float:
        """Smallest distance from ``extent`` to an inner edge (plane borders are not cuts)."""
        x0, y0, x1, y1 = extent
        h, w = shape_hw
        gaps = [
            x0 - self.x0 if self.x0 > 0 else math.inf,
            y0 - self.y0 if self.y0 > 0 else math.inf,
            self.x1 - 1 - x1 if self.x1 < w else math.inf,
            self.y1 - 1 - y1 if self.y1 < h else math.inf,
        ]
        return min(gaps)

    def touches_inner_edge(self, mask: np.ndarray, shape_hw: tuple[int, int]) -> bool:
        """Whether a tile-frame ``mask`` reaches an edge of the tile that is not a plane border."""
        h, w = shape_hw
        return bool(
            (self.y0 > 0 and mask[0].any())
            or (self.x0 > 0 and mask[:, 0].any())
            or (self.y1 < h and mask[-1].any())
            or (self.x1 < w and mask[:, -1].any())
        )


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an ``H x W`` plane (``tile_size`` and ``overlap`` in pixels)."""

    shape_hw: tuple[int, int]
    tile_size: int = 1024
    overlap: int = 256

    def __post_init__(self) -> None:
        if self.tile_size < 64:
            raise ValueError(f"tile_size must be at least 64 pixels, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size // 2 + 1:
            raise ValueError(
                f"overlap must be between 0 and half the tile size ({self.tile_size // 2}), got {self.overlap}"
            )

    @property
    def tiled(self) -> bool:
        return max(self.shape_hw) > self.tile_size

    @property
    def tiles(self) -> list[Tile]:
        """Grid tiles row by row, then the coarse tile (tiled planes only)."""
        h, w = self.shape_hw
        if not self.tiled:
            return [Tile(0, 0, h, w)]
        ts = self.tile_size
        grid = [
            Tile(y, x, min(y + ts, h), min(x + ts, w))
            for y in _starts(h, ts, self.overlap)
            for x in _starts(w, ts, self.overlap)
        ]
        return grid + [Tile(0, 0, h, w, coarse=True)]

    @property
    def coarse(self) -> Tile:
        return self.tiles[-1]

    def choose(self, extent: tuple[float, float, float, float], *, exclude: tuple[Tile, ...] = ()) -> Tile:
        """The tile that holds ``extent`` (XYXY plane pixels) with the most context; the coarse
        tile when no grid tile holds it."""
        tiles = self.tiles
        if not self.tiled:
            return tiles[0]
        best, best_margin = None, -math.inf
        for tile in tiles[:-1]:
            if tile in exclude or not tile.contains(extent):
                continue
            m = tile.margin(extent, self.shape_hw)
            if m > best_margin:
                best, best_margin = tile, m
        return best if best is not None else tiles[-1]


def prompt_extent(
    point_coords: np.ndarray | None = None, box: np.ndarray | None = None, mask: np.ndarray | None = None
) -> tuple[float, float, float, float]:
    """XYXY extent of a prompt (points, box and/or a plane mask's bounding box)."""
    xs: list[float] = []
    ys: list[float] = []
    if point_coords is not None and len(point_coords):
        pts = np.asarray(point_coords, float).reshape(-1, 2)
        xs += [pts[:, 0].min(), pts[:, 0].max()]
        ys += [pts[:, 1].min(), pts[:, 1].max()]
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box).ravel())
        xs += [x0, x1]
        ys += [y0, y1]
    if mask is not None and mask.any():
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        xs += [cols[0], cols[-1]]
        ys += [rows[0], rows[-1]]
    if not xs:
        raise ValueError("a prompt needs points, a box or a mask")
    return (min(xs), min(ys), max(xs), max(ys))

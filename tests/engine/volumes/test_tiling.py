"""Tiles: the grid, which tile answers a prompt, and objects across tile borders come out whole."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from napari_sam_hq.engine.volumes.session import SegmentationSession
from napari_sam_hq.engine.volumes.store import EmbeddingStore
from napari_sam_hq.engine.volumes.tiling import Tile, TileGrid, prompt_extent

from ..fake_predictor import FakeModel, FakePredictor, disc_image


def _discs(shape, discs, *, seed=0):
    """uint16 image with bright discs (cy, cx, r) on noise; returns (image, truth labels)."""
    return disc_image(shape, discs, seed=seed, dtype=np.uint16, low=600, high=3000, noise=80)


def test_grid_covers_the_plane_with_at_least_the_overlap():
    grid = TileGrid((4096, 3000), tile_size=1024, overlap=256)
    tiles = grid.tiles
    assert tiles[-1] == Tile(0, 0, 4096, 3000, coarse=True)
    ys = sorted({t.y0 for t in tiles[:-1]})
    xs = sorted({t.x0 for t in tiles[:-1]})
    assert ys == [0, 768, 1536, 2304, 3072] and xs[0] == 0 and xs[-1] == 3000 - 1024
    assert all(b - a <= 1024 - 256 for a, b in pairwise(xs))
    assert all(t.y1 - t.y0 == 1024 and t.x1 - t.x0 == 1024 for t in tiles[:-1])
    assert TileGrid((1024, 700)).tiles == [Tile(0, 0, 1024, 700)]
    with pytest.raises(ValueError, match="overlap"):
        TileGrid((10, 10), tile_size=256, overlap=200)
    with pytest.raises(ValueError, match="tile_size"):
        TileGrid((10, 10), tile_size=16)


@pytest.mark.parametrize("size", [1, 100, 256])
def test_any_object_up_to_the_overlap_fits_in_a_tile(size):
    grid = TileGrid((3000, 2000), tile_size=1024, overlap=256)
    rng = np.random.default_rng(size)
    for _ in range(200):
        x0, y0 = rng.integers(0, 2000 - size), rng.integers(0, 3000 - size)
        extent = (x0, y0, x0 + size - 1, y0 + size - 1)
        tile = grid.choose(extent)
        assert not tile.coarse and tile.contains(extent)


def test_choice_maximises_the_margin_and_falls_back_to_coarse():
    grid = TileGrid((2048, 2048), tile_size=1024, overlap=256)
    # x 700-740 lies in tiles starting at 0 (margin 283 to x=1023) and 512 (margin 188)
    tile = grid.choose((700, 100, 740, 140))
    assert tile.x0 == 0
    # a 1500-pixel object fits no tile: the coarse pass answers it
    assert grid.choose((100, 100, 1600, 400)).coarse
    assert prompt_extent(np.array([[5, 9]]), np.array([1, 2, 30, 40])) == (1, 2, 30, 40)


def _session(image, **kw):
    return SegmentationSession(FakeModel(), image, store=EmbeddingStore(None, max_in_memory=64),
                               predictor_factory=FakePredictor, **kw)


def test_object_across_a_tile_border_is_whole():
    """A disc centred on the seam of two tiles: the mask equals that of a tile centred on it."""
    shape = (1536, 2048)
    discs = [(700, 1413, 140), (300, 300, 60), (1200, 1700, 70)]
    image, truth = _discs(shape, discs)
    session = _session(image, tile_size=1024, overlap=256)
    assert [t.x0 for t in session.grid_tiles()][:3] == [0, 512, 1024]
    # The disc spans x 1273-1553. A point near its left edge has the most margin in the
    # tile x 512-1535, which cuts the disc: the mask must be redone from the tile x 1024-2047.
    results = session.segment((), [
        {"point_coords": [[1278, 700]], "point_labels": [1]},
        {"box": [1413 - 145, 700 - 145, 1413 + 145, 700 + 145]},
        {"point_coords": [[300, 300]], "point_labels": [1]},
    ])
    # reference: a 1024 x 1024 crop centred on the disc, untiled
    cy, cx = 700, 1413
    y0, x0 = cy - 512, cx - 512
    crop = _session(np.ascontiguousarray(image[y0 : y0 + 1024, x0 : x0 + 1024]), contrast_limits=(0, 4000))
    [ref] = crop.segment((), [{"point_coords": [[512, 512]], "point_labels": [1]}])
    reference = np.zeros(shape, bool)
    reference[y0 : y0 + 1024, x0 : x0 + 1024] = ref.mask
    for res in results[:2]:
        differ = (res.mask != reference).sum()
        assert differ <= 0.01 * reference.sum(), differ
        assert not res.tile.coarse and res.tile.x0 == 1024
    assert (results[2].mask == (truth == 2)).mean() > 0.999


def test_windows_are_plane_pixels_on_any_tile():
    """Windows go with their object to whichever tile answers it (moved into its frame,
    clipped to it): a window around the seam disc leaves its mask whole; one that holds
    the disc's right half only gives that half, on the tile that holds the disc."""
    shape = (1536, 2048)
    image, truth = _discs(shape, [(700, 1413, 140), (300, 300, 60)])
    session = _session(image, tile_size=1024, overlap=256)
    prompt = {"point_coords": [[1278, 700]], "point_labels": [1]}
    [plain, whole, half] = session.segment((), [
        prompt, {**prompt, "window": [1250, 540, 1580, 860]}, {**prompt, "window": [1413, 0, 2047, 1535]}])
    disc = truth == 1
    assert (plain.mask == disc).mean() > 0.999 and plain.tile.x0 == 1024
    assert np.array_equal(whole.mask, plain.mask) and whole.tile == plain.tile
    right = np.zeros(shape, bool)
    right[:, 1413:] = True
    assert np.array_equal(half.mask, plain.mask & right) and half.tile == plain.tile


def test_object_larger_than_a_tile_comes_from_the_coarse_pass():
    shape = (1400, 1400)
    image, truth = _discs(shape, [(700, 700, 600)])
    session = _session(image, tile_size=512, overlap=128)
    [res] = session.segment((), [{"point_coords": [[700, 700]], "point_labels": [1]}])
    assert res.tile.coarse
    dice = 2 * (res.mask & (truth == 1)).sum() / (res.mask.sum() + (truth == 1).sum())
    assert dice > 0.99


def test_tiles_of_a_stack_are_stored_per_slice_and_tile(tmp_path):
    image = np.stack([_discs((1300, 1300), [(650, 650, 40 + 10 * z)], seed=z)[0] for z in range(2)])
    model = FakeModel()
    store = EmbeddingStore(tmp_path / "s.zarr")
    session = SegmentationSession(model, image, store=store, tile_size=1024, overlap=256,
                                  predictor_factory=FakePredictor)
    assert len(session.grid_tiles()) == 4
    for _ in session.iter_embed():
        pass
    assert model.encodes == 8 and len(store.entries(session.model_id)) == 8
    [res] = session.segment((1,), [{"point_coords": [[650, 650]], "point_labels": [1]}])
    assert model.encodes == 8  # answered from a stored tile
    r = (res.mask.sum() / np.pi) ** 0.5
    assert abs(r - 50) < 2


def test_a_region_lookup_reads_only_the_tiles_it_is_asked_for_and_agrees_with_the_plane():
    """A propagation's lookup reads each tile's chunks, not the slice's: the same store keys,
    pixels and limits as the plane's lookup, for dask, zarr and a transposed view; the whole
    plane only for the coarse tile or when the plane's own limits are needed."""
    import dask.array as da
    import zarr

    from napari_sam_hq.engine.volumes.orientation import Orientation

    rng = np.random.default_rng(0)
    stack = rng.integers(0, 4000, (3, 96, 128), dtype=np.uint16)
    reads: list[tuple] = []

    def chunk(block, block_info=None):
        reads.append(tuple(block_info[None]["chunk-location"]))
        return block

    lazy = da.from_array(stack, chunks=(1, 32, 32)).map_blocks(chunk, dtype=stack.dtype)
    z = zarr.create_array(store={}, shape=stack.shape, chunks=(1, 32, 32), dtype=stack.dtype)
    z[:] = stack
    transposed = Orientation(3, (0, 2))  # planes of rows = data axis 0, cols = axis 2
    for data, orientation in ((lazy, None), (z, None), (lazy, transposed)):
        view = orientation.view(data) if orientation else data
        session = SegmentationSession(FakeModel(), view, tile_size=64, overlap=16, contrast_limits=(0, 4000),
                                      predictor_factory=FakePredictor)
        key = (1,)
        tiles = session.grid.tiles
        assert len(tiles) > 2 and tiles[-1].coarse
        reads.clear()
        region = session.region_lookup(key)
        assert not reads  # nothing read before a tile is asked for
        entry, pixels, limits = region(tiles[0])
        if data is lazy:
            assert 0 < len(reads) <= 4 * (1 if orientation is None else 3)  # the tile's chunks only
        plane = session.entry_lookup(session.plane(key))
        for tile in tiles:
            a, b = region(tile), plane(tile)
            assert a[0] == b[0] and a[2] == b[2] == (0.0, 4000.0) and np.array_equal(a[1], b[1])
    # uint8 without limits: each tile's own (none), read alone too
    small = (stack // 16).astype(np.uint8)
    lazy8 = da.from_array(small, chunks=(1, 32, 32)).map_blocks(chunk, dtype=np.uint8)
    session = SegmentationSession(FakeModel(), lazy8, tile_size=64, overlap=16, predictor_factory=FakePredictor)
    reads.clear()
    region, plane = session.region_lookup((1,)), session.entry_lookup(np.asarray(small[1]))
    first = region(session.grid.tiles[0])
    assert 0 < len(reads) <= 4 and first[2] is None
    for tile in session.grid.tiles:
        a, b = region(tile), plane(tile)
        assert a[0] == b[0] and a[2] == b[2] and np.array_equal(a[1], b[1])
    # no limits given and not uint8: the tiles share the plane's, so the plane is read
    session = SegmentationSession(FakeModel(), lazy, tile_size=64, overlap=16, predictor_factory=FakePredictor)
    reads.clear()
    region = session.region_lookup((1,))
    assert len(reads) == 12  # 3 x 4 chunks: the whole plane
    assert region(session.grid.tiles[0])[0] == session.entry_lookup(session.plane((1,)))(session.grid.tiles[0])[0]

"""LabelVolume writes: what a paint may change in each mode, and undo / redo restoring every
pixel (in RAM and on disk)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_hq.engine.annotation import labels as labels_module
from napari_sam_hq.engine.annotation.labels import LabelVolume

from ...conftest import run_python


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("band_bytes", [None, 4 * 80 * 7])  # whole boxes; bands of 7 rows (chunks of 16)
def test_paint_modes_change_only_what_they_may_and_undo_redo_restore_every_pixel(tmp_path, monkeypatch, on_disk,
                                                                                band_bytes):
    """Each paint is one undo step, by bands or not."""
    if band_bytes:
        monkeypatch.setattr(labels_module, "BAND_BYTES", band_bytes)
    rng = np.random.default_rng(0)
    base = ((rng.random((2, 64, 80)) < 0.4) * rng.integers(1, 5, (2, 64, 80))).astype(np.uint32)
    if on_disk:
        import zarr

        # chunks of 16 x 16: bands of 7 rows are cut at 16
        array = zarr.create_array(str(tmp_path / "labels.zarr"), shape=base.shape, chunks=(1, 16, 16),
                                  dtype="uint32", fill_value=0)
        array[:] = base
    else:
        array = base.copy()
    volume = LabelVolume(array)
    region = (slice(1, 2), slice(10, 50), slice(5, 70))
    states = [base]
    for label, mode in ((11, {}), (12, {"keep": 3}), (13, {"overwrite": True})):
        mask = rng.random((1, 40, 65)) < 0.6  # speckled, over labels of four ids
        before = states[-1]
        box = before[region]
        allowed = mask if mode.get("overwrite") else mask & ((box == 0) | (box == mode.get("keep", 0)))
        expected = before.copy()
        expected[region][allowed] = label
        assert volume.paint(region, mask, label, **mode) == int((allowed & (box != label)).sum())
        np.testing.assert_array_equal(np.asarray(volume.array[:]), expected)
        states.append(expected)
    volume.erase(region, 12)  # one step as well
    states.append(np.where(states[-1] == 12, 0, states[-1]).astype(np.uint32))
    np.testing.assert_array_equal(np.asarray(volume.array[:]), states[-1])
    for state in reversed(states[:-1]):
        assert volume.undo()
        np.testing.assert_array_equal(np.asarray(volume.array[:]), state)
    assert not volume.undo()
    for state in states[1:]:
        assert volume.redo()
        np.testing.assert_array_equal(np.asarray(volume.array[:]), state)


WRITE_PEAK = """
import tempfile, tracemalloc
import numpy as np
from napari_sam_hq.engine.annotation.labels import LabelVolume, open_labels_zarr

volume = LabelVolume(open_labels_zarr(tempfile.mkdtemp() + "/labels.zarr", (2, 4096, 4096)))
yy, xx = np.ogrid[:4096, :4096]
mask = ((yy - 2048) ** 2 + (xx - 2048) ** 2 < 1900**2)[None]  # an object nearly the plane's size
plane = (slice(1, 2), slice(0, 4096), slice(0, 4096))
tracemalloc.start()
for step in (lambda: volume.paint(plane, mask, 5), lambda: volume.erase(plane, 5), volume.undo):
    tracemalloc.reset_peak()
    held = tracemalloc.get_traced_memory()[0]
    step()
    print((tracemalloc.get_traced_memory()[1] - held) / 2**20)
"""


def test_writing_an_object_of_a_whole_4096_plane_holds_a_band_not_the_plane():
    """Measured in a subprocess: paint, erase and undo of a 4096 x 4096 object on zarr labels
    hold at most 48 MB of temporaries (a copy of the plane's labels alone is 64 MB; written
    whole, the paint held ~190 MB and the erase ~250 MB)."""
    out = run_python(WRITE_PEAK)
    peaks = [float(v) for v in out.split()]
    assert len(peaks) == 3 and max(peaks) < 48, peaks


def test_bookkeeping_round_trips_reads_the_old_format_and_stays_small(tmp_path):
    """Counter, extents and seeds come back on reopening; labels saved by the first format
    (JSON dicts) are read and saved again in the second; 20,000 objects' bookkeeping is a
    few hundred KB of metadata, which every commit rewrites (format 1: ~6 MB)."""
    import zarr

    from napari_sam_hq.engine.annotation.labels import ATTRS_KEY, open_labels_zarr

    path = tmp_path / "labels.zarr"
    volume = LabelVolume(open_labels_zarr(path, (300, 64, 64)))
    volume.extents = {i: [[i % 300, i % 300 + 1], [i % 50, 60], [3, 64]] for i in range(1, 20_001)}
    volume.seeds = {i: {((0, i % 300),), ((0, (i + 7) % 300),)} for i in range(1, 20_001)}
    volume.seeds[5] = {((0, 1),), ((2, 9),)}  # another orientation's plane
    volume.claim(20_000)
    again = LabelVolume(zarr.open_array(str(path), mode="r+"))
    assert (again.next_id(), again.extents, again.seeds) == (20_001, volume.extents, volume.seeds)
    assert again.scans == 0
    assert (path / "zarr.json").stat().st_size < 400 * 2**10

    old = tmp_path / "old.zarr"
    array = open_labels_zarr(old, (4, 16, 16))
    array.attrs[ATTRS_KEY] = {"format": 1, "next_label": 8, "extents": {"7": [[1, 2], [0, 5], [3, 9]]},
                              "seeds": {"7": [[[0, 1]]]}}
    first = LabelVolume(zarr.open_array(str(old), mode="r+"))
    assert (first.next_id(), first.extents, first.seeds) == (8, {7: [[1, 2], [0, 5], [3, 9]]}, {7: {((0, 1),)}})
    first.add_seed(7, ((0, 2),))  # saved in the new format
    assert zarr.open_array(str(old)).attrs[ATTRS_KEY]["format"] == 2
    second = LabelVolume(zarr.open_array(str(old), mode="r+"))
    assert (second.next_id(), second.extents, second.seeds) == (8, first.extents, {7: {((0, 1),), ((0, 2),)}})


def test_bookkeeping_of_a_2d_image_and_mixed_plane_lengths_round_trips(tmp_path):
    import zarr

    from napari_sam_hq.engine.annotation.labels import open_labels_zarr

    path = tmp_path / "plane.zarr"
    volume = LabelVolume(open_labels_zarr(path, (32, 48)))
    volume.extents = {1: [[0, 5], [2, 9]], 2: [[3, 4], [1, 2]]}
    volume.seeds = {1: {()}, 2: {(), ((0, 3),)}}  # a 2D plane has no slicing axis; one padded row
    volume.claim(2)
    again = LabelVolume(zarr.open_array(str(path), mode="r+"))
    assert (again.extents, again.seeds) == (volume.extents, volume.seeds)

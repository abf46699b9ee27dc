"""LabelVolume writes: what a paint may change in each mode, and undo / redo restoring every
pixel (in RAM and on disk)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_hq.engine.labels import LabelVolume, open_labels_zarr


@pytest.mark.parametrize("on_disk", [False, True])
def test_paint_modes_change_only_what_they_may_and_undo_redo_restore_every_pixel(tmp_path, on_disk):
    rng = np.random.default_rng(0)
    base = ((rng.random((2, 64, 80)) < 0.4) * rng.integers(1, 5, (2, 64, 80))).astype(np.uint32)
    if on_disk:
        array = open_labels_zarr(tmp_path / "labels.zarr", base.shape)
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
    for state in reversed(states[:-1]):
        assert volume.undo()
        np.testing.assert_array_equal(np.asarray(volume.array[:]), state)
    assert not volume.undo()
    for state in states[1:]:
        assert volume.redo()
        np.testing.assert_array_equal(np.asarray(volume.array[:]), state)

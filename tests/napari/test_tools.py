"""Segment everything and measurements in the widget (small random model under Xvfb)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_sam_hq._napari import constants as C

from ..conftest import blob_image
from .test_widget import TIMEOUT, _embed, _wait_preview, _widget

pytestmark = pytest.mark.gui


def _permissive(widget) -> None:
    """Random weights: scores and stability mean nothing, let every mask through."""
    form = widget.everything.auto_form
    form.points_per_side.value = 4
    form.pred_iou_thresh.value = 0.0
    form.stability_score_thresh.value = 0.0
    form.max_mask_fraction.value = 1.0


def test_segment_everything_adds_labels_keeps_mine_and_undoes(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(80, 96, seed=2, channels=1), name="img")
    mine = np.zeros((80, 96), np.uint32)
    mine[:10, :10] = 5
    viewer.add_labels(mine.copy(), name="mine")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("mine")
    _embed(qtbot, widget)
    _permissive(widget)
    widget.auto_settings()  # valid
    assert widget.segment_everything() is not None
    widget.wait(timeout=TIMEOUT / 1000)
    data = viewer.layers["mine"].data
    assert (data[:10, :10] == 5).all()  # never overwritten
    assert data.max() > 5  # new ids after the largest
    viewer.layers["mine"].undo()
    np.testing.assert_array_equal(viewer.layers["mine"].data, mine)


def test_segment_everything_on_a_stack_links_slices(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blob_image(64, 64, seed=1, channels=1)] * 3), name="stack")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    _permissive(widget)
    widget.everything.auto_stack_check.setChecked(True)
    widget.segment_everything()
    widget.wait(timeout=TIMEOUT / 1000)
    labels = viewer.layers[C.LABELS_LAYER].data
    assert labels.shape == (3, 64, 64) and labels.any()
    # identical slices: the same objects with the same ids on every slice
    np.testing.assert_array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(labels[1], labels[2])


def test_measure_fills_table_features_and_exports(make_napari_viewer, qtbot, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(60, 70, seed=3, channels=1), name="img")
    widget = _widget(viewer, checkpoint)
    assert widget.measure() is None  # no labels yet: a message
    _embed(qtbot, widget)
    boxes = viewer.layers[C.BOXES_LAYER]
    boxes.add_rectangles(np.array([[5, 5], [5, 30], [30, 30], [30, 5]]))
    boxes.add_rectangles(np.array([[35, 35], [35, 65], [55, 65], [55, 35]]))
    _wait_preview(qtbot, widget, 2)
    ids = widget.commit()
    table = widget.measure()
    labels = viewer.layers[C.LABELS_LAYER]
    assert table["label"].tolist() == sorted(ids)
    assert table["area"].tolist() == [int((labels.data == i).sum()) for i in sorted(ids)]
    assert "intensity_mean" in table and widget.table.rowCount() == len(ids)
    assert labels.features["label"].tolist() == sorted(ids)
    widget.export_measurements(str(tmp_path / "m.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m.csv"), table, check_dtype=False)


def test_labels_on_disk_are_measured_in_the_background_plane_by_plane(make_napari_viewer, qtbot, checkpoint, tmp_path):
    """A user's zarr labels layer of a stack: the button's worker measures it (progress, the
    table, the layer's features) without turning the layer's data into an array; the same
    table as the engine's, and as regionprops' on the whole array."""
    import zarr
    from skimage.measure import regionprops_table

    from napari_sam_hq.engine.io.measure import measure

    stack = np.stack([blob_image(48, 56, seed=s, channels=1) for s in range(5)])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    z = zarr.create_array(str(tmp_path / "mine.zarr"), shape=stack.shape, chunks=(1, 16, 16), dtype="uint32")
    z[1, 5:20, 8:30] = 4
    z[2:4, 30:40, 10:20] = 11
    layer = viewer.add_labels(z, name="mine")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("mine")
    worker = widget.start_measure()
    assert worker is not None and widget.busy and not widget.measurement.measure_button.isEnabled()
    widget.wait(timeout=60)
    table = widget.measurement.measurements
    assert table["label"].tolist() == [4, 11] and table["volume"].tolist() == [15 * 22, 2 * 10 * 10]
    pd.testing.assert_frame_equal(table, measure(np.asarray(z[:]), stack))
    expected = regionprops_table(np.asarray(z[:]), stack, properties=["label", "area", "intensity_mean"])
    np.testing.assert_allclose(table["intensity_mean"], expected["intensity_mean"], rtol=1e-6)
    assert layer.features["label"].tolist() == [4, 11] and widget.table.rowCount() == 2
    assert type(layer.data).__module__.startswith("zarr") and widget.measurement.measure_button.isEnabled()
    assert widget.measure()["label"].tolist() == [4, 11]  # the scripted form returns the table


def test_measure_returns_when_its_worker_finished_before_it_waited(make_napari_viewer, checkpoint, monkeypatch):
    """``measure()`` for scripts: a worker that is done before the call starts waiting (a small
    image measures in less than a thread switch) must not leave it waiting for ever."""
    from qtpy.QtCore import QThreadPool

    from napari_sam_hq._napari.tools import measure as tools

    viewer = make_napari_viewer()
    viewer.add_image(blob_image(60, 70, seed=3, channels=1), name="img")
    labels = np.zeros((60, 70), np.uint16)
    labels[5:20, 5:30], labels[30:50, 35:60] = 1, 2
    viewer.add_labels(labels, name="mine")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("mine")
    start = widget.measurement.start_measure

    def start_and_let_it_finish():
        worker = start()
        QThreadPool.globalInstance().waitForDone(20_000)  # the job ran to its end; no Qt event yet
        return worker

    monkeypatch.setattr(widget.measurement, "start_measure", start_and_let_it_finish)
    waits = []
    wait = tools.process_events_until
    monkeypatch.setattr(tools, "process_events_until",
                        lambda done, **kw: waits.append(wait(done, timeout=20, **kw)) or waits[-1])
    table = widget.measure()
    assert waits == [True]  # done, not timed out
    assert table["label"].tolist() == [1, 2]


def test_track_a_labels_movie_fix_a_division_and_export(make_napari_viewer, qtbot, checkpoint, tmp_path):
    from napari_sam_hq._napari.tools.track import TRACKS_LAYER

    from ..engine.movies import cell_movie

    movie = cell_movie(16, (128, 128), cells=4, divisions=1, seed=5)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image, name="movie")
    viewer.add_labels(movie.detections, name="cells")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("cells")
    panel = widget.tracking
    assert panel.track() is not None
    widget.wait(timeout=60)
    tracked = viewer.layers["cells tracked"]
    assert tracked.data.shape == movie.truth.shape and TRACKS_LAYER in viewer.layers
    [(parent, (a, b))] = panel.tracks.divisions.items()
    assert viewer.layers[TRACKS_LAYER].graph == {a: [parent], b: [parent]}
    tracked.selected_label = a
    assert panel.fix_division() == f"track {a} is no longer a daughter of {parent}"  # one action
    assert viewer.layers[TRACKS_LAYER].graph == {b: [parent]}
    assert panel.fix_division() == f"track {a} is now a daughter of {parent}"  # and back
    out = panel.export(tmp_path / "ctc_out")
    assert out[0].is_file() and (tmp_path / "ctc_out" / "ctc").is_dir()
    with pytest.raises(FileExistsError):
        panel.export(tmp_path / "ctc_out")
    assert "division" in widget.status_label.text() or "Exported" in widget.status_label.text()
    # a window of frames: the tracked layer has the window's frames only, the tracks their times
    panel.first_spin.setValue(2)
    panel.last_spin.setValue(40)
    assert panel.track() is None  # past the movie's end: a message, nothing runs
    panel.last_spin.setValue(10)
    assert panel.track() is not None
    widget.wait(timeout=60)
    data = viewer.layers["cells tracked"].data
    assert not data[:2].any() and not data[11:].any() and data[2:11].any(axis=(1, 2)).all()
    times = viewer.layers[TRACKS_LAYER].data[:, 1]
    assert times.min() == 2 and times.max() == 10

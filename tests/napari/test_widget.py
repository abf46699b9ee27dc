"""The widget driven as a user would, in real napari viewers under Xvfb (small random model)."""

from __future__ import annotations

import gc
import time
import weakref

import numpy as np
import pytest

from napari_sam_hq._napari import constants as C
from napari_sam_hq._napari.widget import SamHQWidget

from ..conftest import blob_image

pytestmark = pytest.mark.gui
TIMEOUT = 60_000


def _widget(viewer, checkpoint) -> SamHQWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-hq", "SAM-HQ")
    assert isinstance(widget, SamHQWidget)
    widget.settings.model_combo.setCurrentText(checkpoint)
    widget.settings.device_combo.setCurrentText("cpu")
    return widget


def _embed(qtbot, widget, keys=None):
    worker = widget.compute_embeddings(keys=keys)
    assert worker is not None
    widget.wait(timeout=TIMEOUT / 1000)


def _ready(widget, layer) -> list:
    """Slices of ``layer`` whose embeddings are in the widget's store."""
    if widget.model is None:
        return []
    session = widget.session(layer)
    return [k for k in session.keys if session.is_ready(k)]


def _owner(array: np.ndarray) -> np.ndarray:
    """The array that owns ``array``'s memory (a view's base)."""
    return array if array.base is None else array.base


def _wait_preview(qtbot, widget, n_objects: int):
    widget.wait(timeout=TIMEOUT / 1000)
    preview = widget.annotator().preview
    assert sum(len(o) for o in preview.values()) == n_objects, preview


def test_2d_points_preview_commit_undo(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(200, 260, seed=1), name="cells", rgb=True)
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    assert widget.model is not None and widget.progress_bar.value() == 1000
    points = viewer.layers[C.POINTS_LAYER]
    points.add([100, 120])  # (row, col)
    _wait_preview(qtbot, widget, 1)
    [obj] = widget.annotator().preview[()]
    preview = viewer.layers[C.PREVIEW_LAYER]
    (y0, x0), crop = widget.annotator().preview_crop(())
    # the preview layer holds the object's box only, placed where it belongs
    assert preview.visible and preview.data.shape == crop.shape  # (random weights: the box may be all)
    np.testing.assert_allclose(preview.translate, [y0, x0])
    assert np.array_equal(preview.data == 1, obj.mask[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]])
    shown = weakref.ref(_owner(preview.data))  # the pixels themselves, not a view of them
    widget.commit_button.click()
    labels = viewer.layers[C.LABELS_LAYER]
    assert labels.data.shape == (200, 260)
    assert np.array_equal(labels.data > 0, obj.mask)
    assert len(points.data) == 0 and not preview.visible and not widget.annotator().preview
    gc.collect()  # the committed preview's pixels are let go, napari's slice of them too (32 MB at 4096 x 4096)
    assert shown() is None
    widget.undo_button.click()
    assert not labels.data.any()
    widget.redo_button.click()
    assert np.array_equal(labels.data > 0, obj.mask)


def test_negative_points_are_marked_and_used(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(120, 160, seed=2, channels=1), name="grey")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    points = viewer.layers[C.POINTS_LAYER]
    points.add([60, 80])
    widget.prompts.negative_check.setChecked(True)
    points.add([20, 20])
    assert points.features["label"].astype(str).tolist() == [C.POSITIVE, C.NEGATIVE]
    _wait_preview(qtbot, widget, 1)
    np.testing.assert_allclose(points.face_color[1][:3], [1.0, 42 / 255, 140 / 255], atol=0.01)


def test_many_boxes_are_one_batch_and_many_objects(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(200, 300, seed=3), name="cells", rgb=True)
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    boxes = viewer.layers[C.BOXES_LAYER]
    rects = [np.array([[r, c], [r, c + 40], [r + 30, c + 40], [r + 30, c]]) for r in (10, 80, 150) for c in (20, 150)]
    boxes.add_rectangles(rects)
    _wait_preview(qtbot, widget, 6)
    ids = widget.commit()
    assert len(ids) == 6 and len(set(ids)) == 6
    assert set(np.unique(viewer.layers[C.LABELS_LAYER].data)) - {0} == set(ids)


def test_3d_prompts_on_two_slices_label_exactly_those_slices(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    stack = np.stack([blob_image(96, 128, seed=s, channels=1) for s in range(5)])
    viewer.add_image(stack, name="stack")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    assert len(_ready(widget, viewer.layers["stack"])) == 5
    points = viewer.layers[C.POINTS_LAYER]
    points.add([[1, 40, 60], [3, 50, 70]])
    _wait_preview(qtbot, widget, 2)
    ids = widget.commit()
    labels = viewer.layers[C.LABELS_LAYER].data
    assert labels.shape == (5, 96, 128)
    assert ids and len(ids) == 1  # points only: one 3D object
    filled = [z for z in range(5) if labels[z].any()]
    assert filled == [1, 3]


def test_existing_labels_are_kept_unless_overwrite(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(100, 100, seed=4), name="cells", rgb=True)
    existing = np.full((100, 100), 7, np.uint32)
    existing[:, 50:] = 0
    viewer.add_labels(existing.copy(), name="mine")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("mine")
    _embed(qtbot, widget)
    viewer.layers[C.BOXES_LAYER].add_rectangles(np.array([[5, 5], [5, 95], [95, 95], [95, 5]]))
    _wait_preview(qtbot, widget, 1)
    [new_id] = widget.commit()
    data = viewer.layers["mine"].data
    assert new_id == 8
    assert (data[:, :50] == 7).all()  # never overwritten
    viewer.layers[C.BOXES_LAYER].add_rectangles(np.array([[5, 5], [5, 95], [95, 95], [95, 5]]))
    _wait_preview(qtbot, widget, 1)
    widget.overwrite_check.setChecked(True)
    widget.commit()
    assert (data[:, :50] != 7).any()


def test_cancel_mid_embedding_and_layer_removal(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    stack = np.stack([blob_image(64, 64, seed=s, channels=1) for s in range(12)])
    layer = viewer.add_image(stack, name="stack")
    widget = _widget(viewer, checkpoint)
    widget.compute_embeddings()
    qtbot.waitUntil(lambda: len(_ready(widget, layer)) >= 1, timeout=TIMEOUT)
    widget.cancel_button.click()
    widget.wait(timeout=TIMEOUT / 1000)
    assert 1 <= len(_ready(widget, layer)) < 12
    assert widget.compute_button.isEnabled()
    # Removing the image while it is being encoded cancels cleanly.
    widget.compute_embeddings()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0, timeout=TIMEOUT)
    viewer.layers.remove(layer)
    widget.wait(timeout=TIMEOUT / 1000)
    assert not widget.busy and len(_ready_in_store(widget)) < 12


def _ready_in_store(widget) -> list:
    return [k for k in widget.store().entries(widget.store().model_id(widget.model.name, widget.model.checkpoint_id))]


def test_slice_without_embedding_is_computed_on_demand(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    stack = np.stack([blob_image(64, 80, seed=s, channels=1) for s in range(4)])
    viewer.add_image(stack, name="stack")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget, keys=[(0,)])
    viewer.layers[C.POINTS_LAYER].add([2, 30, 40])
    _wait_preview(qtbot, widget, 1)
    assert (2,) in _ready(widget, viewer.layers["stack"])
    assert list(widget.annotator().preview) == [(2,)]
    preview = viewer.layers[C.PREVIEW_LAYER]
    assert not preview.visible  # slice 0 is on screen; its preview shows on slice 2
    viewer.dims.set_current_step(0, 2)
    assert preview.visible and preview.data.shape[0] == 1 and preview.translate[0] == 2 and preview.data.any()


def test_changed_data_is_never_served_stale(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    layer = viewer.add_image(blob_image(64, 64, seed=5, channels=1), name="img")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    assert widget.session(layer).is_ready(())
    layer.data[3, 3] += 1  # in place: the same array, other pixels
    assert not widget.session(layer).is_ready(())
    layer.data = layer.data.copy()  # a new array with the same pixels: found again
    layer.data[3, 3] -= 1
    assert widget.session(layer).is_ready(())


def test_bad_inputs_notify_and_never_crash(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = _widget(viewer, str(tmp_path / "missing.pth"))
    assert widget.compute_embeddings() is None  # no image layer: a warning, no worker
    viewer.add_image(blob_image(32, 32, channels=1), name="img")
    assert widget.compute_embeddings() is not None
    with pytest.raises(Exception, match="missing.pth"):
        widget.wait(timeout=TIMEOUT / 1000)
    assert "Error" in widget.status_label.text() and "missing.pth" in widget.status_label.text()
    assert widget.model is None and widget.compute_button.isEnabled()
    assert widget.commit() == []  # nothing to commit


def test_two_viewers_have_their_own_state(make_napari_viewer, qtbot, checkpoint):
    v1, v2 = make_napari_viewer(), make_napari_viewer()
    v1.add_image(blob_image(50, 60, seed=6), name="a", rgb=True)
    v2.add_image(blob_image(70, 40, seed=7), name="b", rgb=True)
    w1, w2 = _widget(v1, checkpoint), _widget(v2, checkpoint)
    _embed(qtbot, w1)
    assert w1.model is not None and w2.model is None
    assert w1.annotator().pending == 0 and w1.session().is_ready(())
    with pytest.raises(RuntimeError):
        w2.session()
    assert v2.layers[C.POINTS_LAYER] is not v1.layers[C.POINTS_LAYER]


def test_event_loop_keeps_running_while_embedding(make_napari_viewer, qtbot, checkpoint):
    """The encoder runs in a worker: the Qt loop keeps processing timer events meanwhile."""
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blob_image(128, 128, seed=s, channels=1) for s in range(4)]), name="stack")
    widget = _widget(viewer, checkpoint)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    start = time.perf_counter()
    _embed(qtbot, widget)
    total = time.perf_counter() - start
    timer.stop()
    gaps = np.diff(ticks) if len(ticks) > 1 else np.array([total])
    print(f"\nembedding {total:.2f} s, {len(ticks)} timer ticks, longest gap {1000 * gaps.max():.0f} ms")
    assert len(ticks) >= 5
    assert gaps.max() < total  # never blocked for the whole computation


def test_keyboard_shortcuts_are_bound(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    _widget(viewer, checkpoint)
    bound = {str(k) for k in viewer.keymap}
    for key in (C.KEY_COMMIT, C.KEY_NEGATIVE, C.KEY_CLEAR):
        plain = key.replace("-", "").lower()
        assert any(plain in b.replace("-", "").replace("+", "").lower() for b in bound), (key, bound)


def test_4d_data_is_segmented_per_yx_plane(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    data = np.stack([[blob_image(48, 64, seed=t * 3 + z, channels=1) for z in range(3)] for t in range(2)])
    viewer.add_image(data, name="tzyx")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget, keys=[(1, 2)])
    viewer.layers[C.POINTS_LAYER].add([1, 2, 20, 30])
    _wait_preview(qtbot, widget, 1)
    widget.commit()
    labels = viewer.layers[C.LABELS_LAYER].data
    assert labels.shape == (2, 3, 48, 64)
    assert labels[1, 2].any() and not labels[0].any() and not labels[1, :2].any()


def test_prompts_outside_the_image_are_reported_not_used(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(40, 50, channels=1), name="img")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    viewer.layers[C.POINTS_LAYER].add([[200, 300], [20, 25]])
    _wait_preview(qtbot, widget, 1)
    assert viewer.layers[C.PREVIEW_LAYER].data.any()


def test_launcher_docks_the_widget_on_the_sample(monkeypatch):
    """`python -m napari_sam_hq` (the README's first command) opens the sample with SAM-HQ docked."""
    import napari

    from napari_sam_hq.__main__ import main

    monkeypatch.setattr(napari, "run", lambda: None)
    for sample, shape in (("cells_2d", (660, 550)), ("cells_3d", (24, 256, 256))):
        main(["--sample", sample])
        viewer = napari.current_viewer()
        try:
            image = [lay for lay in viewer.layers if isinstance(lay, napari.layers.Image)][0]
            assert image.data.shape == shape
            assert any("SAM-HQ" in name for name in viewer.window.dock_widgets)
            assert C.POINTS_LAYER in viewer.layers
        finally:
            viewer.close()


def test_wait_blocks_until_background_work_is_done_and_raises_its_error(make_napari_viewer, qtbot, checkpoint,
                                                                        tmp_path):
    """The scripted API: wait() returns with the embedding stored and, after a prompt, the
    preview drawn; a worker's error (a checkpoint that does not load) is raised by wait()."""
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(120, 150, seed=4, channels=1), name="img")
    widget = _widget(viewer, checkpoint)
    assert widget.compute_embeddings() is not None and widget.busy
    widget.wait(timeout=TIMEOUT / 1000)
    assert not widget.busy and widget.model is not None and _ready(widget, viewer.layers["img"]) == [()]
    viewer.layers[C.POINTS_LAYER].add([60, 75])
    widget.wait(timeout=TIMEOUT / 1000)
    assert viewer.layers[C.PREVIEW_LAYER].data.any()
    widget.wait(timeout=1)  # nothing running: returns at once, no stale error

    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    widget.settings.model_combo.setCurrentText(str(bad))
    widget.compute_embeddings()
    with pytest.raises(Exception, match="not a readable PyTorch checkpoint"):
        widget.wait(timeout=TIMEOUT / 1000)
    widget.wait(timeout=1)  # the error was raised once

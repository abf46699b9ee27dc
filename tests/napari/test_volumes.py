"""Stacks and large images in the widget: lazy slices and prefetch, the store across
sessions, tiles, propagation with correction and undo (small random model under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_hq._napari import constants as C

from ..conftest import blob_image
from .test_widget import TIMEOUT, _embed, _ready, _wait_preview, _widget

pytestmark = pytest.mark.gui


def _stack(n: int, h: int = 64, w: int = 80) -> np.ndarray:
    return np.stack([blob_image(h, w, seed=s, channels=1) for s in range(n)])


@pytest.mark.filterwarnings("error:viewer.camera:DeprecationWarning")  # napari >= 0.9: viewer.scene.camera
def test_slice_on_screen_first_then_its_neighbours(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_stack(12), name="stack")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget, keys=[(0,)])
    assert _ready(widget, layer) == [(0,)]
    order = []
    widget.store().put = _recording(widget.store().put, order)
    viewer.dims.set_current_step(0, 7)
    widget.wait(timeout=TIMEOUT / 1000)
    assert len(order) == 5
    assert order[0] == (7,) and sorted(order) == [(5,), (6,), (7,), (8,), (9,)]
    assert sorted(_ready(widget, layer)) == [(0,), (5,), (6,), (7,), (8,), (9,)]


def _recording(put, order):
    def wrapper(model, key, emb, *, slice_key=None, tile=None):
        order.append(slice_key)
        return put(model, key, emb, slice_key=slice_key, tile=tile)

    return wrapper


def test_a_new_session_reuses_the_store(make_napari_viewer, qtbot, checkpoint, tmp_path):
    stack = _stack(4)
    store_dir = str(tmp_path / "embeddings.zarr")
    first = make_napari_viewer()
    first.add_image(stack, name="stack")
    w1 = _widget(first, checkpoint)
    w1.settings.store_edit.setText(store_dir)
    _embed(qtbot, w1)
    assert w1.store().writes == 4
    second = make_napari_viewer()
    second.add_image(stack.copy(), name="again")
    w2 = _widget(second, checkpoint)
    w2.settings.store_edit.setText(store_dir)
    _embed(qtbot, w2)
    assert w2.store().writes == 0 and w2.store().hits >= 4
    assert len(_ready(w2, second.layers["again"])) == 4


def test_bad_store_folder_falls_back_to_ram_with_a_message(make_napari_viewer, qtbot, checkpoint, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(40, 50, channels=1), name="img")
    widget = _widget(viewer, checkpoint)
    widget.settings.store_edit.setText(str(tmp_path))
    _embed(qtbot, widget)
    assert "not an embedding store" in widget.status_label.text() or widget.store().root is None
    assert widget.store().root is None
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_large_image_is_tiled_and_prompts_work(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(300, 420, seed=3, channels=1), name="big")
    widget = _widget(viewer, checkpoint)
    widget.settings.tile_spin.setValue(256)
    widget.settings.overlap_spin.setValue(64)
    _embed(qtbot, widget)
    session = widget.session()
    assert session.grid.tiled and len(session.grid_tiles()) == 4
    assert len(widget.store().entries(session.model_id)) == 4
    viewer.layers[C.POINTS_LAYER].add([250, 380])
    _wait_preview(qtbot, widget, 1)
    [new_id] = widget.commit()
    assert (viewer.layers[C.LABELS_LAYER].data == new_id).any()


def test_a_mask_cut_at_a_tile_edge_is_drawn_at_once_then_redone(make_napari_viewer, qtbot, checkpoint):
    """Every tile and the coarse pass stored: the first tile's answer is drawn as soon as it
    is decoded, then the answer of the tile that holds the mask replaces it; a commit made
    while the second decode runs takes the final answer."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(blob_image(300, 420, seed=3, channels=1), name="big")
    widget = _widget(viewer, checkpoint)
    widget.settings.tile_spin.setValue(256)
    widget.settings.overlap_spin.setValue(64)
    _embed(qtbot, widget)
    ann = widget.annotator(layer)
    ann.request([()], tiles=[ann.session.grid.coarse])
    _embed(qtbot, widget, keys=[()])
    point = {"point_coords": [[210.0, 150.0]], "point_labels": [1]}
    rounds = list(ann.session.iter_segment((), [point], encode=False))
    assert len(rounds) == 1 and rounds[0][0].pending is not None  # random weights: a cut mask
    first = rounds[0][0].mask
    final = ann.session.segment((), [point], encode=False)[0].mask
    assert not np.array_equal(first, final)
    preview = viewer.layers[C.PREVIEW_LAYER]
    drawn = []
    # every preview drawn (the layer's data is the objects' box; an empty preview is 1 pixel)
    preview.events.data.connect(lambda _e: preview.data.size > 1 and drawn.append(np.asarray(preview.data) > 0))

    def shown(mask):  # the preview layer's data is the mask's box, placed by translate
        ys, xs = np.nonzero(mask)
        return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]

    viewer.layers[C.POINTS_LAYER].add([150, 210])
    qtbot.waitUntil(lambda: len(drawn) >= 1, timeout=TIMEOUT)
    [ids] = [widget.commit()]  # during or after the second decode: the final answer
    assert len(drawn) >= 2
    assert np.array_equal(drawn[0], shown(first)) and np.array_equal(drawn[1], shown(final))
    np.testing.assert_array_equal(np.asarray(viewer.layers[C.LABELS_LAYER].data) == ids[0], final)


def test_propagate_correct_repropagate_and_undo(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_stack(6), name="stack")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    # one object on slice 2
    viewer.dims.set_current_step(0, 2)
    viewer.layers[C.BOXES_LAYER].add_rectangles(np.array([[2, 10, 10], [2, 10, 60], [2, 50, 60], [2, 50, 10]]))
    _wait_preview(qtbot, widget, 1)
    [label] = widget.commit()
    labels = viewer.layers[C.LABELS_LAYER]
    before = labels.data.copy()
    assert [z for z in range(6) if (before[z] == label).any()] == [2]
    # random weights: make it go through every slice
    widget.propagation.propagation_form.score_threshold.value = 0.0
    widget.propagation.propagation_form.iou_threshold.value = 0.0
    worker = widget.propagate()
    assert worker is not None
    widget.wait(timeout=TIMEOUT / 1000)
    after = labels.data.copy()
    reached = [z for z in range(6) if (after[z] == label).any()]
    assert len(reached) > 1 and set(np.unique(after)) == {0, label}
    assert np.array_equal(after[2], before[2])  # the seed slice is kept as committed
    assert widget.status_label.text().startswith("Propagated")
    # tiles stored later (the queue waits for a propagation) do not overwrite that report: a
    # neighbour's, nor the rest of the plane on screen
    from napari_sam_hq.engine.annotation.annotator import EncodeStep

    ann = widget.annotator(viewer.layers["stack"])
    uid, tile = viewer.layers["stack"].unique_id, ann.session.grid.tiles[0]

    def stored(key):
        widget.encoding.on_yielded(("progress", 1.0, uid, EncodeStep(1.0, key, tile, ann.orientation, True)))

    for key in [(3,), (2,)]:
        stored(key)
        assert widget.status_label.text().startswith("Propagated")
    # over the encoding's own message, the slice on screen's tile says so; a neighbour's does not
    widget.encoding.on_yielded(("status", "Loading vit_tiny…"))
    stored((3,))
    assert widget.status_label.text() == "Loading vit_tiny…"
    stored((2,))
    assert widget.status_label.text().startswith("Embedding ready (slice 2)")
    # and for a prompt that waits for it, over any message
    widget.status_label.setText("Preview: waiting")
    with ann._lock:
        ann.waiting.add((2,))
    try:
        stored((2,))
    finally:
        with ann._lock:
            ann.waiting.discard((2,))
    assert widget.status_label.text().startswith("Embedding ready (slice 2)")
    widget.wait(timeout=TIMEOUT / 1000)
    # correct slice 4 into the same label, then propagate again from the corrections
    viewer.dims.set_current_step(0, 4)
    labels.selected_label = label
    widget.into_selected_check.setChecked(True)
    viewer.layers[C.POINTS_LAYER].add([4, 30, 40])
    _wait_preview(qtbot, widget, 1)
    assert widget.commit() == [label]
    corrected = labels.data[4].copy()
    assert set(np.unique(labels.data)) <= {0, label}
    widget.propagation.selected_only_check.setChecked(True)
    widget.propagate()
    widget.wait(timeout=TIMEOUT / 1000)
    final = labels.data.copy()
    assert set(np.unique(final)) <= {0, label}  # still one 3D object
    assert np.array_equal(final[4], corrected) and np.array_equal(final[2], before[2])
    labels.undo()  # the whole re-propagation is one step
    assert np.array_equal(labels.data[4], corrected)
    np.testing.assert_array_equal(labels.data[[0, 1, 3, 5]], _after_correction_snapshot(after, corrected)[[0, 1, 3, 5]])


def _after_correction_snapshot(after: np.ndarray, corrected: np.ndarray) -> np.ndarray:
    snap = after.copy()
    snap[4] = corrected
    return snap


def test_propagate_needs_a_stack_and_an_object(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(40, 50, channels=1), name="img")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    assert widget.propagate() is None  # 2D: a message, no worker
    viewer.add_image(_stack(3), name="stack")
    widget.settings.image_combo.setCurrentText("stack")
    _embed(qtbot, widget)
    assert widget.propagate() is None  # no object on this slice


def test_fill_between_two_annotated_slices_and_a_stop_point(make_napari_viewer, qtbot, checkpoint):
    """The same object committed on slices 1 and 7: Fill between writes 2-6 (and nothing
    outside), one undo step. A negative point on another slice is a stop point for Propagate
    all (its effect is tested in the engine, where the answers are known)."""
    viewer = make_napari_viewer()
    viewer.add_image(_stack(10), name="stack")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    box = [[10, 10], [10, 60], [50, 60], [50, 10]]
    viewer.dims.set_current_step(0, 1)
    viewer.layers[C.BOXES_LAYER].add_rectangles(np.array([[1, *c] for c in box]))
    _wait_preview(qtbot, widget, 1)
    [label] = widget.commit()
    viewer.dims.set_current_step(0, 7)
    viewer.layers[C.BOXES_LAYER].add_rectangles(np.array([[7, *c] for c in box]))
    _wait_preview(qtbot, widget, 1)
    labels = viewer.layers[C.LABELS_LAYER]
    labels.selected_label = label
    widget.into_selected_check.setChecked(True)
    assert widget.commit() == [label]  # the same object, annotated on slice 7 too
    widget.into_selected_check.setChecked(False)
    form = widget.propagation.propagation_form
    form.score_threshold.value, form.iou_threshold.value = 0.0, 0.0  # random weights: never stop by score
    form.prompt.value = "box+point"
    viewer.dims.set_current_step(0, 4)
    before = labels.data.copy()
    assert widget.propagation.fill_between() is not None
    widget.wait(timeout=TIMEOUT / 1000)
    after = labels.data.copy()
    assert [z for z in range(10) if (after[z] == label).any()] == list(range(1, 8))  # between, not beyond
    widget.undo()
    np.testing.assert_array_equal(labels.data, before)
    # propagate all from slice 1, a negative point on slice 8 in the middle of the object
    viewer.dims.set_current_step(0, 1)
    widget.prompts.negative_check.setChecked(True)
    viewer.layers[C.POINTS_LAYER].add(np.array([[8, 30, 35]]))
    assert widget.propagation.stop_points(widget.annotator(), (1,)) == {8: [(35.0, 30.0)]}

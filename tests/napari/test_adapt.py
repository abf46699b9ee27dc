"""Adapt and Refine in the widget, driven as a user would (small random model under Xvfb):
training on a labels layer with a live plot, using the adapted model with the stored
embeddings, saving it with its card; refining into a new layer or in place as one undo step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_hq._napari import constants as C
from napari_sam_hq.model import load_model

from ..conftest import blob_image
from .test_widget import TIMEOUT, _embed, _widget

pytestmark = pytest.mark.gui


def _discs(shape, centres, r=12):
    yy, xx = np.indices(shape)
    out = np.zeros(shape, np.uint32)
    for i, (cy, cx) in enumerate(centres, start=1):
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return out


def test_adapt_plots_uses_the_adapted_model_without_encoding_again_and_saves(make_napari_viewer, qtbot, checkpoint,
                                                                             tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([blob_image(80, 96, seed=s, channels=1) for s in range(2)]), name="img")
    viewer.add_labels(np.stack([_discs((80, 96), [(25, 25), (50, 60), (20, 75)])] * 2), name="cells")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("cells")
    assert widget.adapt() is None  # no model yet: a message, nothing runs
    _embed(qtbot, widget)
    widget.adaptation.adapt_form.epochs.value = 2
    assert widget.adapt() is not None
    widget.wait(timeout=TIMEOUT / 1000)
    result = widget.adaptation.adapt_result
    assert result is not None and result.train_objects + result.val_objects == 6
    assert len(widget.adaptation.adapt_plot.values["loss"]) == result.steps
    assert len(widget.adaptation.adapt_plot.values["held-out IoU"]) == result.epochs
    base = widget.model
    adapted = widget.use_adapted()
    assert widget.model is adapted and adapted.checkpoint_id == base.checkpoint_id
    ann = widget.annotator()
    assert all(ann.session.is_ready(k) for k in [(0,), (1,)])  # the stored embeddings serve the adapted model
    out, card = widget.save_adapted(tmp_path / "mine.pth")
    info = json.loads(card.read_text())
    assert out.is_file() and info["objects"]["train"] == result.train_objects
    assert info["data"] == {"image": "img", "labels_layers": ["cells"]}
    assert widget.settings.model_combo.currentText() == str(out)
    assert load_model(out, device="cpu").checkpoint_id == base.checkpoint_id


def test_refine_writes_a_new_layer_or_replaces_as_one_undo_step(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(80, 96, seed=4, channels=1), name="img")
    given = _discs((80, 96), [(25, 25), (50, 60)])
    viewer.add_labels(given.copy(), name="cellpose")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("cellpose")
    _embed(qtbot, widget)
    widget.refinement.refine_form.min_iou.value = 0.0  # a random model: accept every answer, to see it written
    assert widget.refine() is not None
    widget.wait(timeout=TIMEOUT / 1000)
    new = viewer.layers["cellpose refined"]
    np.testing.assert_array_equal(viewer.layers["cellpose"].data, given)  # the user's labels untouched
    table = widget.refinement.refine_changes
    assert list(table.label) == [1, 2] and widget.table.rowCount() == 2
    assert [(new.data == i).sum() for i in (1, 2)] == list(table.area_after)
    # in place: one undo step gives the user's labels back
    widget.refinement.refine_replace_check.setChecked(True)
    widget.refine()
    widget.wait(timeout=TIMEOUT / 1000)
    layer = viewer.layers["cellpose"]
    assert not np.array_equal(layer.data, given) or (widget.refinement.refine_changes.status != "refined").all()
    layer.undo()
    np.testing.assert_array_equal(layer.data, given)
    assert C.LABELS_LAYER not in viewer.layers  # refining never created the commit target


def test_cancel_stops_adaptation_and_keeps_nothing(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(blob_image(80, 96, seed=5, channels=1), name="img")
    viewer.add_labels(_discs((80, 96), [(25, 25), (50, 60), (20, 75)]), name="cells")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("cells")
    _embed(qtbot, widget)
    widget.adaptation.adapt_form.epochs.value = 1000
    assert widget.adapt() is not None and widget.busy
    assert widget.adapt() is None  # already running: a message, no second run
    qtbot.waitUntil(lambda: len(widget.adaptation.adapt_plot.values["loss"]) >= 2, timeout=TIMEOUT)
    widget.cancel()
    widget.wait(timeout=TIMEOUT / 1000)
    assert widget.adaptation.adapt_result is None and not widget.adaptation.use_adapted_button.isEnabled()
    assert widget.adaptation.adapt_button.isEnabled() and not widget.busy


def test_a_head_trained_in_adapt_segments_every_cell_in_segment_everything(make_napari_viewer, qtbot, checkpoint,
                                                                          tmp_path, monkeypatch):
    """Adapt trains an instance head on a labels layer (the plot shows held-out AP50), Use puts
    it in Segment everything (mode ais), and the new objects land as labels."""
    from napari_sam_hq.engine.automatic.instances import HeadCard, average_precision, build_head, save_head

    from ..engine.scenes import cell_scene

    scenes = [cell_scene((192, 192), seed=s) for s in range(6)]
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([i for i, _ in scenes]), name="cells img")
    truth = np.stack([lab for _, lab in scenes])
    labelled = truth.copy()
    labelled[5] = 0  # the user labelled five slices (four to learn from, one held out); the sixth is new
    viewer.add_labels(labelled, name="mine")
    widget = _widget(viewer, checkpoint)
    widget.settings.labels_combo.setCurrentText("mine")
    assert widget.segment_everything() is None  # no model yet
    _embed(qtbot, widget)
    widget.everything.set_mode("ais")
    assert widget.segment_everything() is None  # no head yet: a message, nothing runs
    widget.adaptation.set_target("head")
    # the training's length in steps, not time (the form's budget is in minutes): the result must
    # not depend on the machine's speed
    import functools

    from napari_sam_hq.engine.automatic import head_training

    monkeypatch.setattr(head_training, "HeadTrainSettings",
                        functools.partial(head_training.HeadTrainSettings, max_steps=200))
    widget.adaptation.adapt_form.minutes.value = 30
    assert widget.adapt() is not None
    widget.wait(timeout=900)  # 200 steps: about 45 s on 2 free cores, more on a slower machine
    result = widget.adaptation.head_result
    assert result is not None and result.ap50_after >= 0.8
    assert widget.adaptation.adapt_plot.values["held-out AP50"]
    widget.use_adapted()
    assert "held-out AP50" in widget.everything.head_label.text() and widget.everything.mode == "ais"
    out, card = widget.save_adapted(tmp_path / "cells.head.pth")
    assert out.is_file() and json.loads(card.read_text())["data"]["labels_layers"] == ["mine"]
    viewer.dims.set_current_step(0, 5)
    widget.settings.labels_combo.setCurrentText("mine")
    assert widget.segment_everything() is not None
    widget.wait(timeout=TIMEOUT / 1000)
    found = np.asarray(viewer.layers["mine"].data[5])
    assert average_precision(truth[5], found) >= 0.8
    assert "new object(s)" in widget.status_label.text()
    # a head made for another encoder is refused when loaded
    h = build_head({"width": 8})
    foreign, _ = save_head(tmp_path / "foreign.pth", h, HeadCard("vit_h", "0123", dict(h.config)))
    assert widget.everything.load_head(str(foreign)) is None
    assert widget.everything.load_head(str(out)) is not None

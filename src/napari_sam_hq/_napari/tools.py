"""The dock widget's tools beyond the prompt workflow: propagation through a stack, segment
everything, measurement. One class each, mixed into ``SamHQWidget``.

Each uses these parts of the host widget: ``viewer``, ``model``, ``image_layer``,
``annotator()``, ``_oriented()``, ``_target_labels()``, ``labels_volume()``,
``overwrite_check``, ``labels_combo``, ``progress_bar``, ``status_label``,
``cancel_button``, ``busy`` and ``_on_worker_error`` (``run_tool`` starts each worker). The annotator keeps the
seeds (the slices a user committed per label) and writes the results. Like the rest of
the widget, workers run the engine's generators and layers change only in their
handlers, on the GUI thread. Settings forms are magicgui forms of the engine's settings
dataclasses (``forms``).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from ..engine import memory
from ..engine.propagation import PropagationSettings
from ..engine.settings import AutoSettings
from .forms import read_settings, settings_form
from .jobs import process_events_until, torch_job
from .layers import SliceKey, spatial_shape

UNIT = dict(min=0.0, max=1.0, step=0.05)


def tool_ready(host, running, busy: str, missing: str):
    """The chosen image's annotator turned to the plane on screen and the slice shown, or
    ``None`` after telling the user why not (no image or model yet, the tool already running)."""
    image = host.image_layer
    if image is None or host.model is None:
        show_info(f"SAM-HQ: {missing}")
        return None
    if running is not None:
        show_info(f"SAM-HQ: {busy} is already running")
        return None
    return host._oriented(image)


def _tool_target(host, running, busy: str, missing: str):
    """``tool_ready``, and the labels layer a tool writes to (bound to the annotator), or
    ``None`` after telling the user why not (also: unusable labels)."""
    found = tool_ready(host, running, busy, missing)
    if found is None:
        return None
    ann, here = found
    image = host.image_layer
    try:
        target = host._target_labels(image)
        ann.labels = host.labels_volume(target)
    except (ValueError, OSError) as err:
        show_error(f"SAM-HQ: {err}")
        return None
    return ann, here, target


def _show_progress(host, message: tuple[float, str]) -> None:
    """A tool worker's ``(fraction, text)`` on the widget's progress bar and status line."""
    fraction, text = message
    host.progress_bar.setValue(int(1000 * fraction))
    host.status_label.setText(text)


def run_tool(host, worker, *, slot: str, button, returned, message: str, yielded=None):
    """Start a tool's worker: its ``(fraction, text)`` progress on the bar (or ``yielded``),
    its result to ``returned``, its errors shown; ``host.<slot>`` holds it while it runs, its
    ``button`` is disabled and Cancel enabled. Returns the worker."""
    worker.yielded.connect(yielded or (lambda m: _show_progress(host, m)))
    worker.returned.connect(returned)
    worker.errored.connect(host._on_worker_error)
    worker.finished.connect(lambda: _tool_finished(host, slot, button))
    setattr(host, slot, worker)
    button.setEnabled(False)
    host.cancel_button.setEnabled(True)
    host.status_label.setText(message)
    worker.start()
    return worker


def _tool_finished(host, slot: str, button) -> None:
    setattr(host, slot, None)
    memory.trim()  # the worker's temporaries back to the system (engine/memory.py)
    button.setEnabled(True)
    if not host.busy:
        host.cancel_button.setEnabled(False)


def tool_settings(host, cls, form, **fixed):
    """``read_settings(cls, form, **fixed)``, or ``None`` after showing what is wrong."""
    try:
        if cls is PropagationSettings:
            fixed = {"max_slices": form.max_slices.value or None, **fixed}
        return read_settings(cls, form, **fixed)
    except ValueError as err:
        show_error(f"SAM-HQ: {err}")
        return None


class PropagationTool:
    """Propagate committed objects through the stack; correct a slice and propagate again."""

    def _build_propagation(self) -> QGroupBox:
        self._propagate_worker = None
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip(
            "Segment the objects of this slice on the neighbouring slices, both ways, until they end"
        )
        self.selected_only_check = QCheckBox("Only the selected label")
        self.into_selected_check = QCheckBox("Commit corrects the selected label")
        self.into_selected_check.setToolTip(
            "Commit replaces the selected label on this slice instead of adding new objects; "
            "then Propagate again from the corrected slice"
        )
        self.propagation_form = settings_form(
            PropagationSettings,
            {
                "score_threshold": dict(UNIT, tooltip="Stop where the predicted IoU falls below this"),
                "iou_threshold": dict(UNIT, tooltip="Stop where the overlap (IoU) with the previous slice falls below"),
                "min_area": dict(min=1, max=10**7, tooltip="Stop where the object has fewer pixels than this"),
                "max_slices": dict(value=0, annotation=int, min=0, max=100000,
                                   tooltip="At most this many slices each way (0: to the end of the stack)"),
            },
            labels={"score_threshold": "Stop below score", "iou_threshold": "Stop below IoU",
                    "min_area": "Min area (px)", "max_slices": "Max slices each way"},
        )
        box = QGroupBox("Stacks")
        form = QFormLayout(box)
        form.addRow(self.into_selected_check)
        form.addRow(self.propagation_form.native)
        form.addRow(self.selected_only_check)
        form.addRow(self.propagate_button)
        self.propagate_button.clicked.connect(lambda: self.propagate())
        return box

    def propagate(self):
        """Propagate the objects of the current slice (or the selected label) through the
        stack along the last slicing axis of the plane on screen. Returns the worker, or ``None``."""
        image = self.image_layer
        if image is not None and len(spatial_shape(image)) < 3:
            show_info("SAM-HQ: propagation needs a stack (Z or T slices); this image is 2D")
            return None
        found = _tool_target(
            self, self._propagate_worker, "a propagation", "compute embeddings and commit an object first"
        )
        if found is None:
            return None
        ann, here, target = found
        settings = tool_settings(self, PropagationSettings, self.propagation_form)  # max_slices 0 -> None
        if settings is None:
            return None
        ids = [int(target.selected_label)] if self.selected_only_check.isChecked() else ann.labels_on(here)
        if not ids or ids == [0]:
            show_info("SAM-HQ: no object on this slice to propagate: commit one first (or pick its label)")
            return None
        seeds = ann.propagation_seeds(here, ids)
        if not seeds:
            show_info(f"SAM-HQ: label(s) {ids} have no pixels in this stack")
            return None
        return run_tool(self, self._propagate_job(ann, here, seeds, settings), slot="_propagate_worker",
                        button=self.propagate_button,
                        returned=lambda result: self._on_propagated(ann, target, here, result, seeds),
                        message=f"Propagating {len(seeds)} object(s)…")

    @torch_job
    def _propagate_job(self, ann, here, seeds, settings):
        return (yield from ann.iter_propagate(here, seeds, settings))

    def _on_propagated(self, ann, target, here, found, seeds) -> None:
        if target not in self.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed during propagation; nothing written")
            return
        ann.labels = self.labels_volume(target)
        ann.apply_propagation(here, found, seeds, overwrite=self.overwrite_check.isChecked())
        reach = sorted(found)
        span = f"slices {reach[0]}-{reach[-1]}" if reach else "no new slice"
        self.status_label.setText(f"Propagated {len(seeds)} object(s): {span} ({len(found)} slices).")
        self.progress_bar.setValue(1000)


class SegmentEverythingTool:
    """Automatic segmentation of the slice or the stack into new labels."""

    def _build_segment_everything(self) -> QGroupBox:
        self._auto_worker = None
        self.auto_button = QPushButton("Segment everything")
        self.auto_button.setToolTip("Prompt a grid of points and add every object found as a new label")
        self.auto_stack_check = QCheckBox("Whole stack (linked in 3D)")
        self.auto_form = settings_form(
            AutoSettings,
            {
                "points_per_side": dict(min=4, max=128),
                "pred_iou_thresh": dict(UNIT, step=0.01),
                "stability_score_thresh": dict(UNIT, step=0.01),
                "min_mask_region_area": dict(min=0, max=100000,
                                             tooltip="Holes and islands smaller than this (pixels) are removed"),
                "max_mask_fraction": dict(min=0.01, max=1.0, step=0.05,
                                          tooltip="Masks covering more of the image than this (the background) "
                                                  "are dropped"),
            },
            labels={"points_per_side": "Points per side", "pred_iou_thresh": "Min predicted IoU",
                    "stability_score_thresh": "Min stability", "min_mask_region_area": "Min area (px)",
                    "max_mask_fraction": "Max area (fraction)"},
        )
        box = QGroupBox("Segment everything")
        form = QFormLayout(box)
        form.addRow(self.auto_form.native)
        form.addRow(self.auto_stack_check)
        form.addRow(self.auto_button)
        self.auto_button.clicked.connect(lambda: self.segment_everything())
        return box

    def auto_settings(self) -> AutoSettings:
        """The form's settings (``ValueError`` names a bad value)."""
        return read_settings(AutoSettings, self.auto_form)

    def segment_everything(self):
        """Automatic segmentation of the current slice (or the whole stack, linked along its
        first slicing axis) into new labels. Returns the worker, or ``None``."""
        found = _tool_target(self, self._auto_worker, "segment everything",
                             "pick an image and compute embeddings first (the model loads then)")
        if found is None:
            return None
        ann, here, target = found
        settings = tool_settings(self, AutoSettings, self.auto_form)
        if settings is None:
            return None
        whole = self.auto_stack_check.isChecked() and len(here) == 1
        if self.auto_stack_check.isChecked() and len(here) > 1:
            show_info("SAM-HQ: whole-stack linking works along one slicing axis; segmenting this slice only")
        keys = None if whole else [here]
        return run_tool(self, self._auto_job(ann, keys, settings), slot="_auto_worker",
                        button=self.auto_button,
                        returned=lambda labels: self._on_auto_done(ann, target, None if whole else here, labels),
                        message="Segmenting everything…")

    @torch_job
    def _auto_job(self, ann, keys, settings):
        from ..engine.automatic import iter_segment_everything

        return (yield from ann.in_front(iter_segment_everything(ann.session, keys, settings)))

    def _on_auto_done(self, ann, target, key: SliceKey | None, labels: np.ndarray) -> None:
        if target not in self.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed; nothing written")
            return
        ann.labels = self.labels_volume(target)
        new = ann.add_objects(key, labels, overwrite=self.overwrite_check.isChecked())
        self.status_label.setText(
            f"Segment everything: {len(new)} new object(s). Correct with prompts; Ctrl+Z undoes it."
        )
        self.progress_bar.setValue(1000)


class MeasureTool:
    """Per-object measurements of the labels layer (regionprops' columns, plane by plane in a
    worker): a table in the widget, the layer's features, CSV."""

    def _build_measure(self) -> list:
        self.measurements = None  # the last measurement table (pandas), also in the layer's features
        self._measure_worker = None
        self.measure_button = QPushButton("Measure labels")
        self.measure_button.setToolTip("Area/volume, centroid, bbox, diameter and intensities per label")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.table = QTableWidget()
        self.table.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.measure_button, 1)
        row.addWidget(self.export_button)
        self.measure_button.clicked.connect(lambda: self.start_measure())
        self.export_button.clicked.connect(self._export_dialog)
        return [row, self.table]

    def measure(self):
        """Measure the chosen labels layer and return the table (``None`` after a message when
        there is nothing to measure). It runs as the button does, plane by plane in the
        background (labels on disk are never loaded whole; engine/measure.py), while this
        call processes Qt events until it is done: for scripts."""
        if self.start_measure() is None:
            return None
        # the slot is cleared by the handler run_tool connected before the start: a handler
        # connected here, after it, missed the signal of a worker that had already finished
        # (a small image measures in less than a thread switch) and waited for ever
        process_events_until(lambda: self._measure_worker is None)
        return self.measurements

    def start_measure(self):
        """Measure the chosen labels layer in the background: a table in the widget, in the
        layer's features and in ``measurements``; progress per plane; Cancel stops it.
        Returns the worker, or ``None`` after a message."""
        from ..engine.measure import iter_measure

        name = self.labels_combo.currentText()
        layers = self.viewer.layers
        if name not in layers or not isinstance(layers[name], Labels):
            show_info("SAM-HQ: no labels layer to measure yet: commit objects first")
            return None
        if self._measure_worker is not None:
            show_info("SAM-HQ: a measurement is already running")
            return None
        target = layers[name]
        labels = target.data[0] if target.multiscale else target.data
        image = self.image_layer
        intensity = None
        if image is not None and not image.rgb:
            data = image.data[0] if image.multiscale else image.data
            if tuple(data.shape) == tuple(labels.shape):
                intensity = data
        try:
            planes = iter_measure(labels, intensity)
        except ValueError as err:
            show_error(f"SAM-HQ: {err}")
            return None
        self.measurements = None
        return run_tool(self, self._measure_job(planes, name), slot="_measure_worker", button=self.measure_button,
                        returned=lambda table: self._on_measured(table, target),
                        message=f"Measuring '{name}'…")

    @thread_worker  # numpy only: no torch, no OpenMP team to give back
    def _measure_job(self, planes, name: str):
        while True:
            try:
                fraction = next(planes)
            except StopIteration as done:
                return done.value
            yield fraction, f"Measuring '{name}': {100 * fraction:.0f}% of the planes"

    def _on_measured(self, table, target) -> None:
        self.measurements = table
        features = table.copy()
        features.insert(0, "index", features["label"])
        target.features = features
        self._show_table(table)
        self.export_button.setEnabled(True)
        self.progress_bar.setValue(1000)
        self.status_label.setText(
            f"Measured {len(table)} object(s) in '{target.name}' (also in the layer's features)."
        )

    def _show_table(self, table) -> None:
        self.table.clear()
        self.table.setRowCount(len(table))
        self.table.setColumnCount(len(table.columns))
        self.table.setHorizontalHeaderLabels([str(c) for c in table.columns])
        for r, row in enumerate(table.itertuples(index=False)):
            for c, value in enumerate(row):
                text = f"{value:.4g}" if isinstance(value, float) else str(value)
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.setVisible(True)

    def export_measurements(self, path: str) -> None:
        from ..engine.io import write_table

        if self.measurements is None:
            raise RuntimeError("measure the labels first")
        write_table(path, self.measurements)

    def _export_dialog(self) -> None:  # pragma: no cover - a modal dialog
        path, _ = QFileDialog.getSaveFileName(self, "Measurements", "measurements.csv", "CSV (*.csv)")
        if path:
            self.export_measurements(path)

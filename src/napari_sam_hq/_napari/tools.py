"""The dock widget's tools beyond the prompt workflow: propagation through a stack, segment
everything, measurement. One class each, mixed into ``SamHQWidget``.

Each uses these parts of the host widget: ``viewer``, ``model``, ``image_layer``,
``session()``, ``_target_labels()``, ``overwrite_check``, ``labels_combo``,
``progress_bar``, ``status_label``, ``cancel_button``, ``_embed_worker``,
``_on_worker_error``, and ``_committed`` (the slices the user committed per label, which
``commit`` records and propagation uses as seeds). Like the rest of the widget, workers run the engine's generators and
layers change only in their handlers, on the GUI thread.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
)

from ..engine.automatic import AutoSettings
from ..engine.propagation import PropagationSettings
from .commit import add_labels, apply_planes
from .layers import SliceKey, current_key, leading_ndim


def _tool_target(host, running, busy: str, missing: str):
    """The chosen image and the labels layer a tool writes to, or ``None`` after telling the
    user why not (no image or model yet, the tool already running, an unusable labels layer)."""
    image = host.image_layer
    if image is None or host.model is None:
        show_info(f"SAM-HQ: {missing}")
        return None
    if running is not None:
        show_info(f"SAM-HQ: {busy} is already running")
        return None
    try:
        return image, host._target_labels(image)
    except ValueError as err:
        show_error(f"SAM-HQ: {err}")
        return None


def _show_progress(host, message: tuple[float, str]) -> None:
    """A tool worker's ``(fraction, text)`` on the widget's progress bar and status line."""
    fraction, text = message
    host.progress_bar.setValue(int(1000 * fraction))
    host.status_label.setText(text)


def _unit_spin(value: float, step: float, tip: str = "") -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 1.0)
    spin.setSingleStep(step)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


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
        defaults = PropagationSettings()
        self.score_spin = _unit_spin(defaults.score_threshold, 0.05, "Stop where the predicted IoU falls below this")
        self.iou_spin = _unit_spin(
            defaults.iou_threshold, 0.05, "Stop where the overlap (IoU) with the previous slice falls below this"
        )
        box = QGroupBox("Stacks")
        form = QFormLayout(box)
        form.addRow(self.into_selected_check)
        form.addRow("Stop below score", self.score_spin)
        form.addRow("Stop below IoU", self.iou_spin)
        form.addRow(self.selected_only_check)
        form.addRow(self.propagate_button)
        self.propagate_button.clicked.connect(lambda: self.propagate())
        return box

    def propagate(self):
        """Propagate the objects of the current slice (or the selected label) through the
        stack along the last slicing axis. Returns the worker, or ``None``."""
        image = self.image_layer
        if image is not None and leading_ndim(image) == 0:
            show_info("SAM-HQ: propagation needs a stack (Z or T slices); this image is 2D")
            return None
        found = _tool_target(
            self, self._propagate_worker, "a propagation", "compute embeddings and commit an object first"
        )
        if found is None:
            return None
        image, target = found
        n = leading_ndim(image)
        from ..engine.propagation import seeds_from_labels

        axis = n - 1
        here = current_key(self.viewer, image)
        prefix = here[:axis]
        stack = target.data[prefix] if prefix else target.data  # N x H x W along the axis
        if self.selected_only_check.isChecked():
            ids = [int(target.selected_label)]
        else:
            ids = [int(i) for i in np.unique(np.asarray(stack[here[axis]])) if i != 0]
        if not ids or ids == [0]:
            show_info("SAM-HQ: no object on this slice to propagate: commit one first (or pick its label)")
            return None
        tracked = self._committed.get(target.unique_id, {})
        slices = {
            label: {k[axis] for k in tracked[label] if k[:axis] == prefix}
            for label in ids if tracked.get(label) and any(k[:axis] == prefix for k in tracked[label])
        }
        seeds = seeds_from_labels(stack, ids, slices=slices)
        if not seeds:
            show_info(f"SAM-HQ: label(s) {ids} have no pixels in this stack")
            return None
        settings = PropagationSettings(score_threshold=self.score_spin.value(), iou_threshold=self.iou_spin.value())
        worker = self._propagate_job(self.session(image), seeds, axis, here, settings)
        worker.yielded.connect(lambda message: _show_progress(self, message))
        worker.returned.connect(lambda found: self._on_propagated(target, prefix, found, slices, seeds))
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_propagate_finished)
        self._propagate_worker = worker
        self.propagate_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText(f"Propagating {len(seeds)} object(s)…")
        worker.start()
        return worker

    @thread_worker
    def _propagate_job(self, session, seeds, axis, base_key, settings):
        from ..engine.propagation import iter_propagate

        return (yield from iter_propagate(session, seeds, axis=axis, base_key=base_key, settings=settings))

    def _on_propagated(self, target, prefix, found, slices, seeds) -> None:
        from ..engine.propagation import write_propagation

        if target not in self.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed during propagation; nothing written")
            return
        stack = target.data[prefix] if prefix else target.data
        planes = write_propagation(
            stack, found, overwrite=self.overwrite_check.isChecked(), seeds={k: v for k, v in slices.items()}
        )
        apply_planes(target, prefix, planes)
        reach = sorted(found)
        span = f"slices {reach[0]}-{reach[-1]}" if reach else "no new slice"
        self.status_label.setText(f"Propagated {len(seeds)} object(s): {span} ({len(found)} slices).")
        self.progress_bar.setValue(1000)

    def _on_propagate_finished(self) -> None:
        self._propagate_worker = None
        self.propagate_button.setEnabled(True)
        if self._embed_worker is None:
            self.cancel_button.setEnabled(False)


class SegmentEverythingTool:
    """Automatic segmentation of the slice or the stack into new labels."""

    def _build_segment_everything(self) -> QGroupBox:
        self._auto_worker = None
        auto = AutoSettings()
        self.auto_button = QPushButton("Segment everything")
        self.auto_button.setToolTip("Prompt a grid of points and add every object found as a new label")
        self.auto_stack_check = QCheckBox("Whole stack (linked in 3D)")
        self.points_side_spin = QSpinBox()
        self.points_side_spin.setRange(4, 128)
        self.points_side_spin.setValue(auto.points_per_side)
        self.auto_iou_spin = _unit_spin(auto.pred_iou_thresh, 0.01)
        self.auto_stability_spin = _unit_spin(auto.stability_score_thresh, 0.01)
        self.min_area_spin = QSpinBox()
        self.min_area_spin.setRange(0, 100000)
        self.min_area_spin.setValue(auto.min_mask_region_area)
        self.min_area_spin.setToolTip("Holes and islands smaller than this (pixels) are removed")
        self.max_fraction_spin = _unit_spin(
            auto.max_mask_fraction, 0.05, "Masks covering more of the image than this (the background) are dropped"
        )
        self.max_fraction_spin.setMinimum(0.01)
        box = QGroupBox("Segment everything")
        form = QFormLayout(box)
        form.addRow("Points per side", self.points_side_spin)
        form.addRow("Min predicted IoU", self.auto_iou_spin)
        form.addRow("Min stability", self.auto_stability_spin)
        form.addRow("Min area (px)", self.min_area_spin)
        form.addRow("Max area (fraction)", self.max_fraction_spin)
        form.addRow(self.auto_stack_check)
        form.addRow(self.auto_button)
        self.auto_button.clicked.connect(lambda: self.segment_everything())
        return box

    def auto_settings(self) -> AutoSettings:
        return AutoSettings(
            points_per_side=self.points_side_spin.value(),
            pred_iou_thresh=self.auto_iou_spin.value(),
            stability_score_thresh=self.auto_stability_spin.value(),
            min_mask_region_area=self.min_area_spin.value(),
            max_mask_fraction=self.max_fraction_spin.value(),
        )

    def segment_everything(self):
        """Automatic segmentation of the current slice (or the whole 3D stack) into new labels.
        Returns the worker, or ``None``."""
        found = _tool_target(self, self._auto_worker, "segment everything",
                             "pick an image and compute embeddings first (the model loads then)")
        if found is None:
            return None
        image, target = found
        here = current_key(self.viewer, image)
        whole = self.auto_stack_check.isChecked() and len(here) == 1
        if self.auto_stack_check.isChecked() and len(here) > 1:
            show_info("SAM-HQ: whole-stack linking works along one slicing axis; segmenting this slice only")
        keys = None if whole else [here]
        worker = self._auto_job(self.session(image), keys, self.auto_settings())
        worker.yielded.connect(lambda message: _show_progress(self, message))
        worker.returned.connect(lambda labels: self._on_auto_done(target, () if whole else here, labels))
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_auto_finished)
        self._auto_worker = worker
        self.auto_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText("Segmenting everything…")
        worker.start()
        return worker

    @thread_worker
    def _auto_job(self, session, keys, settings):
        from ..engine.automatic import iter_segment_everything

        return (yield from iter_segment_everything(session, keys, settings))

    def _on_auto_done(self, target, key: SliceKey, labels: np.ndarray) -> None:
        if target not in self.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed; nothing written")
            return
        n = add_labels(target, key, labels, overwrite=self.overwrite_check.isChecked())
        self.status_label.setText(f"Segment everything: {n} new object(s). Correct with prompts; Ctrl+Z undoes it.")
        self.progress_bar.setValue(1000)

    def _on_auto_finished(self) -> None:
        self._auto_worker = None
        self.auto_button.setEnabled(True)
        if self._embed_worker is None and self._propagate_worker is None:
            self.cancel_button.setEnabled(False)


class MeasureTool:
    """regionprops of the labels layer: a table in the widget, the layer's features, CSV."""

    def _build_measure(self) -> list:
        self.measurements = None  # the last measurement table (pandas), also in the layer's features
        self.measure_button = QPushButton("Measure labels")
        self.measure_button.setToolTip("Area/volume, centroid, bbox, diameter and intensities per label")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.table = QTableWidget()
        self.table.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.measure_button, 1)
        row.addWidget(self.export_button)
        self.measure_button.clicked.connect(lambda: self.measure())
        self.export_button.clicked.connect(self._export_dialog)
        return [row, self.table]

    def measure(self):
        """Measure the chosen labels layer: a table in the widget and in the layer's features."""
        from ..engine.measure import measure

        name = self.labels_combo.currentText()
        layers = self.viewer.layers
        if name not in layers or not isinstance(layers[name], Labels):
            show_info("SAM-HQ: no labels layer to measure yet: commit objects first")
            return None
        target = layers[name]
        labels = np.asarray(target.data)
        image = self.image_layer
        intensity = None
        if image is not None and not image.rgb and tuple(image.data.shape) == labels.shape:
            intensity = np.asarray(image.data)
        try:
            table = measure(labels, intensity)
        except ValueError as err:
            show_error(f"SAM-HQ: {err}")
            return None
        self.measurements = table
        features = table.copy()
        features.insert(0, "index", features["label"])
        target.features = features
        self._show_table(table)
        self.export_button.setEnabled(True)
        self.status_label.setText(f"Measured {len(table)} object(s) in '{name}' (also in the layer's features).")
        return table

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

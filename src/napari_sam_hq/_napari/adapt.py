"""The dock widget's adaptation tools: **Adapt** (train the decoder on the objects of labels
layers, with a live plot of the loss and the held-out IoU; use or save the adapted model)
and **Refine** (re-segment every object of a labels layer; a new layer or the old one
replaced as one undo step; a per-object table). One class each, mixed into ``SamHQWidget``.

They use these parts of the host widget: ``viewer``, ``model``, ``image_layer``,
``annotator()``, ``_oriented()``, ``_set_model()``, ``_model_request()``,
``labels_volume()``, ``labels_combo``, ``progress_bar``, ``status_label``,
``cancel_button``, ``_show_table()``, ``disk_threshold_spin``, ``labels_path()`` and
``_on_worker_error``. The engine does the work (``Annotator.iter_training_images``,
``training.iter_train``, ``Annotator.iter_refine``); workers run its generators and the
layers change only in their handlers, on the GUI thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QCheckBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QPushButton

from ..engine.refine import REFINED, RefineSettings
from ..engine.training import TrainSettings
from .constants import PREVIEW_LAYER
from .forms import settings_form
from .jobs import torch_job
from .layers import spatial_shape
from .plot import CurvePlot
from .tools import run_tool, tool_ready, tool_settings

NO_MODEL = "pick an image and compute embeddings first (the model loads then)"
REFINE_TOO = ("box", "points", "mask", "refine")


def _labels_layers(host, image, also_others: bool) -> list[Labels]:
    """The chosen labels layer (and, if ``also_others``, every other labels layer) of the
    image's shape; the preview layer never counts."""
    shape = spatial_shape(image)
    chosen = host.labels_combo.currentText()
    out = []
    for layer in host.viewer.layers:
        if not isinstance(layer, Labels) or layer.name == PREVIEW_LAYER or tuple(layer.data.shape) != shape:
            continue
        if layer.name == chosen or also_others:
            out.append(layer)
    return out


class AdaptTool:
    """Train the decoder on the objects the user has (stored embeddings reused)."""

    def _build_adapt(self) -> QGroupBox:
        self._adapt_worker = None
        self.adapt_result = None  # the last TrainResult (with its settings in adapt_settings)
        self.adapt_settings: TrainSettings | None = None
        self._adapt_base = None  # (model request, model) the result was trained from
        self._adapt_data: dict = {}  # what it was trained on, for the model card
        self.adapt_others_check = QCheckBox("Also the image's other labels layers")
        self.adapt_form = settings_form(
            TrainSettings,
            {
                "train": dict(widget_type="ComboBox", choices=["hq", "decoder"],
                              tooltip="hq: the HQ token, its MLP and mask features (fast, safe); "
                                      "decoder: the whole mask decoder"),
                "epochs": dict(min=1, max=1000),
                "minutes": dict(value=0.0, annotation=float, min=0.0, max=600.0, step=0.5,
                                tooltip="A time budget (0: none)"),
                "seed": dict(min=0, max=2**31 - 1),
            },
            labels={"train": "Train", "epochs": "Epochs", "minutes": "Minutes (0: no limit)", "seed": "Seed"},
        )
        self.adapt_refine_check = QCheckBox("Also for refining labels")
        self.adapt_refine_check.setToolTip("Train on the prompts Refine gives (box, inner point, own mask) as well")
        self.adapt_button = QPushButton("Adapt")
        self.adapt_button.setToolTip("Train on the objects of the labels layer; the image encoder is never changed, "
                                     "so every stored embedding is reused")
        self.use_adapted_button = QPushButton("Use adapted model")
        self.use_adapted_button.setEnabled(False)
        self.save_adapted_button = QPushButton("Save…")
        self.save_adapted_button.setEnabled(False)
        self.adapt_plot = CurvePlot(("loss", "#ff9d00"), ("held-out IoU", "#00c8ff"))
        box = QGroupBox("Adapt to your images")
        form = QFormLayout(box)
        form.addRow(self.adapt_form.native)
        form.addRow(self.adapt_refine_check)
        form.addRow(self.adapt_others_check)
        form.addRow(self.adapt_button)
        form.addRow(self.adapt_plot)
        row = QHBoxLayout()
        row.addWidget(self.use_adapted_button, 1)
        row.addWidget(self.save_adapted_button)
        form.addRow(row)
        self.adapt_button.clicked.connect(lambda: self.adapt())
        self.use_adapted_button.clicked.connect(lambda: self.use_adapted())
        self.save_adapted_button.clicked.connect(self._save_dialog)
        return box

    def adapt(self):
        """Train on the objects of the chosen labels layer (and the others if ticked) of the
        chosen image, in the plane on screen. Returns the worker, or ``None``."""
        found = tool_ready(self, self._adapt_worker, "adaptation", NO_MODEL)
        if found is None:
            return None
        ann, _ = found
        prompts = {"prompts": REFINE_TOO} if self.adapt_refine_check.isChecked() else {}
        settings = tool_settings(self, TrainSettings, self.adapt_form, minutes=self.adapt_form.minutes.value or None,
                                 **prompts)
        if settings is None:
            return None
        layers = _labels_layers(self, self.image_layer, self.adapt_others_check.isChecked())
        if not layers:
            show_info("SAM-HQ: no labels layer of this image's shape to learn from: commit or load labels first")
            return None
        base = (self._model_request(), self.model)
        data = {"image": self.image_layer.name, "labels_layers": [layer.name for layer in layers]}
        self.adapt_plot.clear()
        return run_tool(self, self._adapt_job(ann, [(layer.name, layer.data) for layer in layers], settings),
                        slot="_adapt_worker", button=self.adapt_button, yielded=self._on_adapt_yielded,
                        returned=lambda result: self._on_adapted(result, settings, base, data),
                        message=f"Adapting to the objects of {', '.join(repr(la.name) for la in layers)}…")

    @torch_job
    def _adapt_job(self, ann, sources, settings):
        from ..engine.training import iter_train

        images = []
        for n, (name, data) in enumerate(sources):
            gen = ann.iter_training_images(data, name=name)
            try:
                while True:
                    fraction, text = next(gen)
                    yield ("data", (n + fraction) / len(sources), text)
            except StopIteration as stop:
                images += stop.value
        gen = iter_train(ann.session.model, images, settings)
        try:
            while True:
                yield ("step", next(gen))
        except StopIteration as stop:
            return stop.value

    def _on_adapt_yielded(self, message) -> None:
        if message[0] == "data":
            _, fraction, text = message
            self.progress_bar.setValue(int(1000 * fraction))
            self.status_label.setText(f"Collecting objects and embeddings: {text}")
            return
        step = message[1]
        self.progress_bar.setValue(int(1000 * step.fraction))
        if step.val_iou is None:
            self.adapt_plot.add("loss", step.loss)
            self.status_label.setText(f"Adapting: epoch {step.epoch}, loss {step.loss:.3f}")
        else:
            self.adapt_plot.add("held-out IoU", step.val_iou)
            self.status_label.setText(f"Adapting: epoch {step.epoch}, held-out IoU {step.val_iou:.3f}")

    def _on_adapted(self, result, settings, base, data) -> None:
        self.adapt_result, self.adapt_settings, self._adapt_base, self._adapt_data = result, settings, base, data
        self.use_adapted_button.setEnabled(True)
        self.save_adapted_button.setEnabled(True)
        self.progress_bar.setValue(1000)
        hint = " (HQ token only recommended)" if result.recommended_hq_token_only else ""
        self.status_label.setText(
            f"Adapted in {result.seconds:.0f} s ({result.train_objects} objects, {result.val_objects} held out): "
            f"held-out IoU {result.iou_before:.3f} -> {result.iou_after:.3f}{hint}. Use it or save it."
        )

    def use_adapted(self):
        """Switch to the adapted model (every stored embedding stays valid: the encoder is the
        same). Returns the model."""
        from ..engine.training import apply_state

        if self.adapt_result is None:
            raise RuntimeError("adapt first: nothing has been trained yet")
        request, base = self._adapt_base
        model = apply_state(base, self.adapt_result.state)
        model.eval()
        self._set_model(self._model_request(), model)
        if self.adapt_result.recommended_hq_token_only:
            self.hq_only_check.setChecked(True)
        self.status_label.setText(f"Using the adapted {request[0]} (stored embeddings reused).")
        self.request_preview()
        return model

    def save_adapted(self, path: str | Path) -> tuple[Path, Path]:
        """Write the adapted checkpoint (official format) and its JSON model card; the model
        box then names the file, so the next session loads it."""
        from ..engine.training import save_adapted
        from ..model.download import checkpoint_path

        if self.adapt_result is None:
            raise RuntimeError("adapt first: nothing has been trained yet")
        (name, device), _ = self._adapt_base
        out = save_adapted(path, checkpoint_path(name, download=False), self.adapt_result,
                           settings=self.adapt_settings, data=self._adapt_data)
        if self.model is not None and self.model is not self._adapt_base[1]:  # the adapted one is in use
            self.model_combo.setCurrentText(str(out[0]))
            self._model_key = self._model_request()
        self.status_label.setText(f"Saved {out[0]} and its model card {out[1].name}.")
        return out

    def _save_dialog(self) -> None:  # pragma: no cover - a modal dialog
        path, _ = QFileDialog.getSaveFileName(self, "Adapted SAM-HQ", "sam_hq_adapted.pth", "Checkpoints (*.pth)")
        if path:
            self.save_adapted(path)


class RefineTool:
    """Re-segment every object of a labels layer with SAM-HQ."""

    def _build_refine(self) -> QGroupBox:
        self._refine_worker = None
        self.refine_changes = None  # the last per-object table (pandas)
        self.refine_replace_check = QCheckBox("Replace the labels (one undo step)")
        self.refine_replace_check.setToolTip("Off: the result goes to a new layer '<labels> refined'")
        self.refine_slice_check = QCheckBox("This slice only")
        self.refine_form = settings_form(
            RefineSettings,
            {
                "min_iou": dict(min=0.0, max=1.0, step=0.05,
                                tooltip="Keep the old mask when the new one overlaps it less than this"),
                "use_point": dict(tooltip="Prompt with the object's innermost point as well as its box"),
                "use_mask": dict(tooltip="Prompt with the object's own mask"),
            },
            labels={"min_iou": "Keep old below IoU", "use_point": "Inner point", "use_mask": "Own mask"},
        )
        self.refine_button = QPushButton("Refine labels")
        self.refine_button.setToolTip("Segment every object of the labels layer again, prompted by itself; ids kept")
        box = QGroupBox("Refine labels")
        form = QFormLayout(box)
        form.addRow(self.refine_form.native)
        form.addRow(self.refine_slice_check)
        form.addRow(self.refine_replace_check)
        form.addRow(self.refine_button)
        self.refine_button.clicked.connect(lambda: self.refine())
        return box

    def refine(self):
        """Refine the chosen labels layer of the chosen image (the slice on screen, or every
        slice) in the plane on screen. Returns the worker, or ``None``."""
        found = tool_ready(self, self._refine_worker, "refinement", NO_MODEL)
        if found is None:
            return None
        ann, here = found
        image = self.image_layer
        [source] = _labels_layers(self, image, False) or [None]
        if source is None:
            show_info("SAM-HQ: pick the labels layer to refine in the Labels box (it must fit the image)")
            return None
        settings = tool_settings(self, RefineSettings, self.refine_form)
        if settings is None:
            return None
        keys = [here] if self.refine_slice_check.isChecked() else None
        return run_tool(self, self._refine_job(ann, source.data, keys, settings), slot="_refine_worker",
                        button=self.refine_button,
                        returned=lambda result: self._on_refined(ann, image, source, result),
                        message=f"Refining '{source.name}'…")

    @torch_job
    def _refine_job(self, ann, data, keys, settings):
        return (yield from ann.iter_refine(data, keys, settings))

    def _on_refined(self, ann, image: Image, source: Labels, result) -> None:
        if source not in self.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed during refinement; nothing written")
            return
        if self.refine_replace_check.isChecked():
            target = source
        else:
            target = self.viewer.add_labels(self._copy_labels(image, source), name=f"{source.name} refined",
                                            scale=source.scale, translate=source.translate)
        ann.apply_refine(result, self.labels_volume(target))
        table = result.table()
        self.refine_changes = table
        self._show_table(table)
        refined = sum(c.status == REFINED for c in result.changes)
        where = "replaced (Undo restores them)" if target is source else f"in '{target.name}'"
        self.status_label.setText(f"Refined {refined} of {len(result.changes)} object(s), {where}; "
                                  "the table says how much each changed.")
        self.progress_bar.setValue(1000)

    def _copy_labels(self, image, source: Labels):
        """A writable copy of ``source``'s data: in RAM below the on-disk threshold, else a
        zarr next to the image's labels, copied plane by plane."""
        from ..engine.labels import dense_nbytes, open_labels_zarr

        data = source.data
        shape = tuple(int(s) for s in data.shape)
        if dense_nbytes(shape, data.dtype) <= self.disk_threshold_spin.value() * 2**30:
            return np.array(data)
        path = self.labels_path(image).with_name(f"{source.name} refined.labels.zarr")
        array = open_labels_zarr(path, shape, dtype=np.dtype(data.dtype) if data.dtype.kind == "u" else np.uint32)
        for i in range(shape[0]):
            array[i] = np.asarray(data[i])
        return array

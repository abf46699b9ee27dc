"""**Adapt to your images**: train the decoder on the objects of labels layers (the image
encoder is frozen, so every stored embedding is reused), with a live plot of the loss and the
held-out IoU; use the adapted model or save it with its model card."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QPushButton

from ...engine.adaptation.training import TrainSettings
from ..forms import settings_form
from ..host import ToolHost
from ..jobs import torch_job
from ..plot import CurvePlot

NO_MODEL = "pick an image and compute embeddings first (the model loads then)"
REFINE_TOO = ("box", "points", "mask", "refine")
JOB = "adapt"


class AdaptPanel(QGroupBox):
    def __init__(self, host: ToolHost) -> None:
        super().__init__("Adapt to your images")
        self.host = host
        self.adapt_result = None  # the last TrainResult (with its settings in adapt_settings)
        self.adapt_settings: TrainSettings | None = None
        self._base = None  # (model request, model) the result was trained from
        self._data: dict = {}  # what it was trained on, for the model card
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
        form = QFormLayout(self)
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

    def adapt(self):
        """Train on the objects of the chosen labels layer (and the others if ticked) of the
        chosen image, in the plane on screen. Returns the worker, or ``None``."""
        host = self.host
        found = host.ready(JOB, "adaptation", NO_MODEL)
        if found is None:
            return None
        ann, _ = found
        prompts = {"prompts": REFINE_TOO} if self.adapt_refine_check.isChecked() else {}
        settings = host.settings(TrainSettings, self.adapt_form, minutes=self.adapt_form.minutes.value or None,
                                 **prompts)
        if settings is None:
            return None
        image = host.image_layer
        layers = host.labels.of_image(image, also_others=self.adapt_others_check.isChecked())
        if not layers:
            show_info("SAM-HQ: no labels layer of this image's shape to learn from: commit or load labels first")
            return None
        base = (host.model_request(), host.model)
        data = {"image": image.name, "labels_layers": [layer.name for layer in layers]}
        self.adapt_plot.clear()
        return host.jobs.run(JOB, _adapt_job(ann, [(layer.name, layer.data) for layer in layers], settings),
                             button=self.adapt_button, yielded=self._on_yielded,
                             returned=lambda result: self._on_adapted(result, settings, base, data),
                             message=f"Adapting to the objects of {', '.join(repr(la.name) for la in layers)}…")

    def _on_yielded(self, message) -> None:
        status = self.host.status
        if message[0] == "data":
            _, fraction, text = message
            status.progress(fraction)
            status.say(f"Collecting objects and embeddings: {text}")
            return
        step = message[1]
        status.progress(step.fraction)
        if step.val_iou is None:
            self.adapt_plot.add("loss", step.loss)
            status.say(f"Adapting: epoch {step.epoch}, loss {step.loss:.3f}")
        else:
            self.adapt_plot.add("held-out IoU", step.val_iou)
            status.say(f"Adapting: epoch {step.epoch}, held-out IoU {step.val_iou:.3f}")

    def _on_adapted(self, result, settings, base, data) -> None:
        self.adapt_result, self.adapt_settings, self._base, self._data = result, settings, base, data
        self.use_adapted_button.setEnabled(True)
        self.save_adapted_button.setEnabled(True)
        self.host.status.progress(1.0)
        hint = " (HQ token only recommended)" if result.recommended_hq_token_only else ""
        self.host.status.say(
            f"Adapted in {result.seconds:.0f} s ({result.train_objects} objects, {result.val_objects} held out): "
            f"held-out IoU {result.iou_before:.3f} -> {result.iou_after:.3f}{hint}. Use it or save it."
        )

    def use_adapted(self):
        """Switch to the adapted model (every stored embedding stays valid: the encoder is the
        same). Returns the model."""
        from ...engine.adaptation.training import apply_state

        if self.adapt_result is None:
            raise RuntimeError("adapt first: nothing has been trained yet")
        request, base = self._base
        model = apply_state(base, self.adapt_result.state)
        model.eval()
        self.host.use_model(model, hq_token_only=self.adapt_result.recommended_hq_token_only)
        self.host.status.say(f"Using the adapted {request[0]} (stored embeddings reused).")
        return model

    def save_adapted(self, path: str | Path) -> tuple[Path, Path]:
        """Write the adapted checkpoint (official format) and its JSON model card; when the
        adapted model is in use, the model box then names the file."""
        from ...engine.adaptation.training import save_adapted
        from ...model.download import checkpoint_path

        if self.adapt_result is None:
            raise RuntimeError("adapt first: nothing has been trained yet")
        (name, _device), _ = self._base
        out = save_adapted(path, checkpoint_path(name, download=False), self.adapt_result,
                           settings=self.adapt_settings, data=self._data)
        if self.adapted_model_in_use:  # the model box names the file, so the next session loads it
            self.host.rename_model(str(out[0]))
        self.host.status.say(f"Saved {out[0]} and its model card {out[1].name}.")
        return out

    @property
    def adapted_model_in_use(self) -> bool:
        return self._base is not None and self.host.model is not None and self.host.model is not self._base[1]

    def _save_dialog(self) -> None:  # pragma: no cover - a modal dialog
        path, _ = QFileDialog.getSaveFileName(self, "Adapted SAM-HQ", "sam_hq_adapted.pth", "Checkpoints (*.pth)")
        if path:
            self.save_adapted(path)


@torch_job
def _adapt_job(ann, sources, settings):
    from ...engine.adaptation.training import iter_train

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

"""**Adapt to your images**: train the decoder, or an instance head for segment everything,
on the objects of labels layers (the image encoder is frozen, so every stored embedding is
reused), with a live plot of the loss and the held-out score (IoU for the decoder, AP50 for
the head); use the result or save it with its card."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QPushButton

from ...engine.adaptation.training import TrainSettings
from ..forms import settings_form
from ..host import ToolHost
from ..jobs import torch_job
from ..plot import CurvePlot

NO_MODEL = "pick an image and compute embeddings first (the model loads then)"
REFINE_TOO = ("box", "points", "mask", "refine")
JOB = "adapt"
TARGETS = {"decoder": "the decoder (prompts)", "head": "an instance head (segment everything)"}


class AdaptPanel(QGroupBox):
    def __init__(self, host: ToolHost) -> None:
        super().__init__("Adapt to your images")
        self.host = host
        self.adapt_result = None  # the last TrainResult (with its settings in adapt_settings)
        self.adapt_settings: TrainSettings | None = None
        self._base = None  # (model request, model) the result was trained from
        self._data: dict = {}  # what it was trained on, for the model card
        self.head_result = None  # the last HeadTrainResult, when an instance head was trained
        self.adapt_target_combo = QComboBox()
        for target, text in TARGETS.items():
            self.adapt_target_combo.addItem(text, target)
        self.adapt_target_combo.setToolTip("An instance head segments every cell in about a second (Segment "
                                           "everything, modes ais and apg); the decoder answers prompts better")
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
        self.use_adapted_button = QPushButton("Use")
        self.use_adapted_button.setToolTip("The adapted decoder for prompts, or the head for Segment everything")
        self.use_adapted_button.setEnabled(False)
        self.save_adapted_button = QPushButton("Save…")
        self.save_adapted_button.setEnabled(False)
        self.adapt_plot = CurvePlot(("loss", "#ff9d00"), ("held-out IoU", "#00c8ff"), ("held-out AP50", "#7cff6b"))
        form = QFormLayout(self)
        form.addRow("Train", self.adapt_target_combo)
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

    @property
    def target(self) -> str:
        """What Adapt trains: ``decoder`` or ``head``."""
        return self.adapt_target_combo.currentData()

    def set_target(self, target: str) -> None:
        self.adapt_target_combo.setCurrentIndex(list(TARGETS).index(target))

    def adapt(self):
        """Train (the decoder, or an instance head) on the objects of the chosen labels layer
        (and the others if ticked) of the chosen image, in the plane on screen. Returns the
        worker, or ``None``."""
        host = self.host
        found = host.ready(JOB, "adaptation", NO_MODEL)
        if found is None:
            return None
        ann, _ = found
        if self.target == "head":
            return self._adapt_head(ann)
        prompts = {"prompts": REFINE_TOO} if self.adapt_refine_check.isChecked() else {}
        settings = host.settings(TrainSettings, self.adapt_form, minutes=self.adapt_form.minutes.value or None,
                                 **prompts)
        if settings is None:
            return None
        learn = self._labels_to_learn()
        if learn is None:
            return None
        layers, data = learn
        base = (host.model_request(), host.model)
        self.adapt_plot.clear()
        return host.jobs.run(JOB, _adapt_job(ann, [(layer.name, layer.data) for layer in layers], settings),
                             button=self.adapt_button, yielded=self._on_yielded,
                             returned=lambda result: self._on_adapted(result, settings, base, data),
                             message=f"Adapting to the objects of {', '.join(repr(la.name) for la in layers)}…")

    def _labels_to_learn(self) -> tuple[list, dict] | None:
        """The labels layers to learn from (the chosen one, and the others of the image's
        shape if ticked) and what the result records of them; ``None`` (said) if none."""
        image = self.host.image_layer
        layers = self.host.labels.of_image(image, also_others=self.adapt_others_check.isChecked())
        if not layers:
            show_info("SAM-HQ: no labels layer of this image's shape to learn from: commit or load labels first")
            return None
        return layers, {"image": image.name, "labels_layers": [layer.name for layer in layers]}

    def _adapt_head(self, ann):
        from ...engine.automatic.head_training import HeadTrainSettings

        host = self.host
        form = self.adapt_form
        try:
            settings = HeadTrainSettings(minutes=form.minutes.value or 5.0, seed=form.seed.value)
        except ValueError as err:
            show_info(f"SAM-HQ: {err}")
            return None
        learn = self._labels_to_learn()
        if learn is None:
            return None
        layers, data = learn
        self.adapt_plot.clear()
        return host.jobs.run(JOB, _head_job(ann, [(layer.name, layer.data) for layer in layers], settings, data),
                             button=self.adapt_button, yielded=self._on_yielded,
                             returned=self._on_head_trained,
                             message=f"Training an instance head on {', '.join(repr(la.name) for la in layers)}…")

    def _on_head_trained(self, result) -> None:
        self.head_result, self.adapt_result = result, None
        self.use_adapted_button.setEnabled(True)
        self.save_adapted_button.setEnabled(True)
        self.host.status.progress(1.0)
        self.host.status.say(
            f"Instance head trained in {result.seconds:.0f} s ({result.steps} steps): held-out AP50 "
            f"{result.ap50_before:.2f} -> {result.ap50_after:.2f}; {result.stopped}. Use it in Segment everything."
        )

    def _on_yielded(self, message) -> None:
        status = self.host.status
        if message[0] == "step" and hasattr(message[1], "val_ap50"):  # the instance head's
            step = message[1]
            status.progress(step.fraction)
            if step.val_ap50 is None:
                if step.step % 10 == 0:
                    self.adapt_plot.add("loss", step.loss)
                return
            self.adapt_plot.add("held-out AP50", step.val_ap50)
            status.say(f"Training the head: step {step.step}, held-out AP50 {step.val_ap50:.2f}")
            return
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
        self.head_result = None
        self.use_adapted_button.setEnabled(True)
        self.save_adapted_button.setEnabled(True)
        self.host.status.progress(1.0)
        hint = " (HQ token only recommended)" if result.recommended_hq_token_only else ""
        self.host.status.say(
            f"Adapted in {result.seconds:.0f} s ({result.train_objects} objects, {result.val_objects} held out): "
            f"held-out IoU {result.iou_before:.3f} -> {result.iou_after:.3f}{hint}; {result.stopped}. "
            "Use it or save it."
        )

    def use_adapted(self):
        """Switch to the adapted model (every stored embedding stays valid: the encoder is the
        same). Returns the model."""
        from ...engine.adaptation.training import apply_state

        if self.head_result is not None:
            r = self.head_result
            self.host.set_head(r.head, f"trained now (held-out AP50 {r.ap50_after:.2f})")
            self.host.status.say("The instance head is in use in Segment everything.")
            return r.head
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
        from ...engine.automatic.instances import save_head
        from ...model.download import checkpoint_path

        if self.head_result is not None:
            out = save_head(path, self.head_result.head, self.head_result.card)
            self.host.status.say(f"Saved the instance head {out[0]} and its card {out[1].name}.")
            return out
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
        name = "cells.head.pth" if self.head_result is not None else "sam_hq_adapted.pth"
        path, _ = QFileDialog.getSaveFileName(self, "Save", name, "Checkpoints (*.pth)")
        if path:
            self.save_adapted(path)


@torch_job
def _train_job(ann, sources, collect: str, train):
    """Collect training data from each labels layer (``ann.<collect>``: ``iter_training_images``
    or ``iter_head_samples``), yielding ``("data", fraction, text)``, then ``train(model,
    data)`` yielding ``("step", step)``; returns its result."""
    data = []
    for n, (name, labels) in enumerate(sources):
        gen = getattr(ann, collect)(labels, name=name)
        try:
            while True:
                fraction, text = next(gen)
                yield ("data", (n + fraction) / len(sources), text)
        except StopIteration as stop:
            data += stop.value
    gen = train(ann.session.model, data)
    try:
        while True:
            yield ("step", next(gen))
    except StopIteration as stop:
        return stop.value


def _adapt_job(ann, sources, settings):
    from ...engine.adaptation.training import iter_train

    return _train_job(ann, sources, "iter_training_images", lambda model, data: iter_train(model, data, settings))


def _head_job(ann, sources, settings, info):
    from ...engine.automatic.head_training import iter_train_head

    return _train_job(ann, sources, "iter_head_samples",
                      lambda model, data: iter_train_head(model, data, settings, data=info))

"""The SAM-HQ dock widget: embeddings in the background, prompts, preview, commit, undo.

Threads: model loading and embeddings run in a ``thread_worker`` generator (progress,
cancel between encoder steps); decoding runs in a second worker, coalesced so only the
latest prompts are decoded. Layers change only on the GUI thread, in the workers'
``yielded`` / ``returned`` handlers. All state lives on the widget: two viewers, two
widgets, nothing shared but the (read-only) model weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import constants as C
from .commit import write_objects
from .layers import SliceKey, all_keys, collect_prompts, current_key, leading_ndim
from .layers import plane, plane_signature, spatial_shape

if TYPE_CHECKING:
    import napari

    from ..engine import ImageEmbedding
    from ..model import SamHQ


# Slices whose decoder-ready state (embedding + HQ features, ~25 MB for vit_b) is kept.
READY_SLICES = 8


def _predict_objects(predictor, objects: list[dict], *, multimask: bool, hq_only: bool):
    """Masks and scores for every object of one slice (``SlicePrompts.objects()``);
    boxes-only objects in one batch."""
    results: list[tuple[np.ndarray, float] | None] = [None] * len(objects)
    box_only = [i for i, o in enumerate(objects) if set(o) == {"box"}]
    if box_only:
        batch = predictor.predict_batch(
            boxes=np.stack([objects[i]["box"] for i in box_only]),
            multimask_output=multimask,
            hq_token_only=hq_only,
        )
        for j, i in enumerate(box_only):
            results[i] = (batch.masks[j, 0], float(batch.scores[j, 0]))
    for i, obj in enumerate(objects):
        if results[i] is None:
            out = predictor.predict(**obj, multimask_output=multimask, hq_token_only=hq_only)
            results[i] = (out.masks[0], float(out.scores[0]))
    return results


class SamHQWidget(QWidget):
    """Dock widget; its controls are attributes so scripts and tests can drive it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        # --- session state
        self.model: SamHQ | None = None
        self._model_key: tuple[str, str] | None = None
        # (layer.unique_id, slice key) -> (content signature, embedding). A plugin sees layers
        # through proxies, so id() is not stable; unique_id is.
        self._embeddings: dict[tuple[Any, SliceKey], tuple[str, ImageEmbedding]] = {}
        self._embed_worker = None
        self._embed_layer = None
        self._decode_worker = None
        self._decode_dirty = False
        # (layer uid, slice key, signature) -> predictor with that embedding set. Used only by
        # the decode worker (one at a time), so the prompt path skips set_image_embedding's
        # HQ-feature computation.
        self._ready: OrderedDict[tuple, Any] = OrderedDict()
        self._preview_objects: dict[SliceKey, list[tuple[np.ndarray, float, bool]]] = {}
        self._build_ui()
        self._connect_viewer()
        self._refresh_layers()
        if self.image_layer is not None:
            self._on_image_changed()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.addItems(C.MODEL_CHOICES)
        self.model_combo.setToolTip("A registry model (downloaded once) or the path of a .pth file / HF folder")
        self.browse_button = QPushButton("Browse…")
        self.device_combo = QComboBox()
        self.device_combo.addItems(C.DEVICE_CHOICES)
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip(f"Committed objects go here; '{C.LABELS_LAYER}' is created if needed")
        self.compute_button = QPushButton("Compute embeddings")
        self.compute_button.setToolTip("Encode the current slice first, then the rest of the stack")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.negative_check = QCheckBox(f"Negative points ({C.KEY_NEGATIVE})")
        self.negative_check.setToolTip("New points mark background (magenta) instead of the object (green)")
        self.multimask_check = QCheckBox("Multimask (best of three)")
        self.hq_only_check = QCheckBox("HQ token only")
        self.overwrite_check = QCheckBox("Overwrite existing labels")
        self.overwrite_check.setToolTip("Off: committed objects only fill pixels that are still 0")
        self.commit_button = QPushButton(f"Commit ({C.KEY_COMMIT})")
        self.commit_button.setToolTip("Write the preview into the labels layer as new objects and clear the prompts")
        self.undo_button = QPushButton("Undo commit")
        self.undo_button.setToolTip("Undo the last commit (Ctrl+Z in the labels layer works too)")
        self.clear_button = QPushButton(f"Clear prompts ({C.KEY_CLEAR})")
        self.status_label = QLabel("Pick an image and compute embeddings.")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        form.addRow("Model", model_row)
        form.addRow("Device", self.device_combo)
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        compute_row = QHBoxLayout()
        compute_row.addWidget(self.compute_button, 1)
        compute_row.addWidget(self.cancel_button)
        commit_row = QHBoxLayout()
        commit_row.addWidget(self.commit_button, 1)
        commit_row.addWidget(self.undo_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(compute_row)
        layout.addWidget(self.progress_bar)
        for w in (self.negative_check, self.multimask_check, self.hq_only_check, self.overwrite_check):
            layout.addWidget(w)
        layout.addLayout(commit_row)
        layout.addWidget(self.clear_button)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self.browse_button.clicked.connect(self._browse)
        self.compute_button.clicked.connect(lambda: self.compute_embeddings())
        self.cancel_button.clicked.connect(self.cancel)
        self.commit_button.clicked.connect(lambda: self.commit())
        self.undo_button.clicked.connect(self.undo)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.negative_check.toggled.connect(self._on_negative_toggled)
        self.multimask_check.toggled.connect(lambda _: self.request_preview())
        self.hq_only_check.toggled.connect(lambda _: self.request_preview())
        self.image_combo.currentIndexChanged.connect(lambda _: self._on_image_changed())

    def _connect_viewer(self) -> None:
        v = self.viewer
        v.layers.events.inserted.connect(self._refresh_layers)
        v.layers.events.removed.connect(self._on_layer_removed)
        v.dims.events.current_step.connect(self._on_slice_changed)
        v.bind_key(C.KEY_COMMIT, lambda _v: self.commit(), overwrite=True)
        v.bind_key(C.KEY_NEGATIVE, lambda _v: self.negative_check.toggle(), overwrite=True)
        v.bind_key(C.KEY_CLEAR, lambda _v: self.clear_prompts(), overwrite=True)

    def _browse(self) -> None:  # pragma: no cover - a modal dialog
        path, _ = QFileDialog.getOpenFileName(self, "SAM-HQ checkpoint", "", "Checkpoints (*.pth *.pt *.safetensors)")
        if path:
            self.model_combo.setCurrentText(path)

    # ------------------------------------------------------------------ layers

    @property
    def image_layer(self) -> napari.layers.Image | None:
        name = self.image_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Image) else None

    def _refresh_layers(self, event: Any = None) -> None:
        """Update the layer choices. Prompt layers are created only when an image is newly
        chosen through an insertion (never while layers are being removed, e.g. on close)."""
        before = self.image_combo.currentText()
        images = [lay.name for lay in self.viewer.layers if isinstance(lay, Image)]
        labels = [lay.name for lay in self.viewer.layers if isinstance(lay, Labels) and lay.name != C.PREVIEW_LAYER]
        for combo, names, default in (
            (self.image_combo, images, None),
            (self.labels_combo, labels or [C.LABELS_LAYER], C.LABELS_LAYER),
        ):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names if default is None or default in names else [default, *names])
            if current in names or (default and current == default):
                combo.setCurrentText(current)
            combo.blockSignals(False)
        inserted = event is not None and getattr(event, "type", "") == "inserted"
        if inserted and self.image_combo.currentText() != before and self.image_layer is not None:
            self._on_image_changed()

    def _on_layer_removed(self, event: Any) -> None:
        removed = event.value
        if self._embed_layer is not None and removed.unique_id == self._embed_layer.unique_id and self._embed_worker is not None:
            self.cancel()
            show_warning(f"SAM-HQ: image layer '{removed.name}' was removed; embedding cancelled")
        self._embeddings = {k: v for k, v in self._embeddings.items() if k[0] != removed.unique_id}
        for ready_key in [k for k in self._ready if k[0] == removed.unique_id]:
            del self._ready[ready_key]
        self._refresh_layers()

    def _on_image_changed(self) -> None:
        layer = self.image_layer
        if layer is None:
            return
        self._ensure_prompt_layers(layer)
        n = leading_ndim(layer)
        if n > 1:
            show_info(f"SAM-HQ: '{layer.name}' has {n} slicing axes; each Y-X plane is segmented on its own")
        if n >= 1 and not layer.rgb and layer.data.shape[0] <= 4 and layer.data.ndim >= 3:
            show_info(
                f"SAM-HQ: '{layer.name}' has {layer.data.shape[0]} planes along its first axis. If these are "
                "channels, not slices, open them as separate layers (channel_axis) and pick one, or "
                "make an RGB layer; SAM-HQ treats the first axis as slices."
            )

    def _ensure_prompt_layers(self, image: napari.layers.Image) -> None:
        """Points and boxes layers matching the image's data frame (created once)."""
        import pandas as pd

        ndim = len(spatial_shape(image))
        frame = dict(scale=image.scale[:ndim], translate=image.translate[:ndim])
        common = dict(ndim=ndim, **frame)
        layers = self.viewer.layers
        if C.POINTS_LAYER not in layers or layers[C.POINTS_LAYER].ndim != ndim:
            if C.POINTS_LAYER in layers:
                layers.remove(C.POINTS_LAYER)
            features = pd.DataFrame({"label": pd.Categorical([], categories=[C.POSITIVE, C.NEGATIVE])})
            points = self.viewer.add_points(
                np.empty((0, ndim)), name=C.POINTS_LAYER, features=features, size=10,
                face_color=C.POSITIVE_COLOR, border_color="white", **common,
            )
            points.feature_defaults["label"] = C.NEGATIVE if self.negative_check.isChecked() else C.POSITIVE
            points.events.data.connect(self._on_points_changed)
            points.mode = "add"
        if C.BOXES_LAYER not in layers or layers[C.BOXES_LAYER].ndim != ndim:
            if C.BOXES_LAYER in layers:
                layers.remove(C.BOXES_LAYER)
            boxes = self.viewer.add_shapes(
                name=C.BOXES_LAYER, edge_color="yellow", face_color="transparent", edge_width=2, **common
            )
            boxes.events.data.connect(self._on_boxes_changed)
        if C.PREVIEW_LAYER not in layers or layers[C.PREVIEW_LAYER].data.shape != spatial_shape(image):
            if C.PREVIEW_LAYER in layers:
                layers.remove(C.PREVIEW_LAYER)
            self.viewer.add_labels(
                np.zeros(spatial_shape(image), np.uint16), name=C.PREVIEW_LAYER, opacity=0.5, **frame
            )
        self.viewer.layers.selection.active = self.viewer.layers[C.POINTS_LAYER]

    def _prompt_layers(self):
        layers = self.viewer.layers
        points = layers[C.POINTS_LAYER] if C.POINTS_LAYER in layers else None
        boxes = layers[C.BOXES_LAYER] if C.BOXES_LAYER in layers else None
        return points, boxes

    @staticmethod
    def _change_done(event: Any) -> bool:
        """napari emits data events before ('adding') and after ('added') a change."""
        action = str(getattr(event, "action", "") or "")
        return not action.lower().endswith("ing")

    def _on_boxes_changed(self, event: Any = None) -> None:
        if self._change_done(event):
            self.request_preview()

    def _on_points_changed(self, event: Any = None) -> None:
        if not self._change_done(event):
            return
        points, _ = self._prompt_layers()
        if points is not None and len(points.data):
            labels = points.features["label"].astype(str).to_numpy()
            colors = [C.NEGATIVE_COLOR if lab == C.NEGATIVE else C.POSITIVE_COLOR for lab in labels]
            with points.events.data.blocker():
                points.face_color = colors
        self.request_preview()

    def _on_negative_toggled(self, negative: bool) -> None:
        points, _ = self._prompt_layers()
        if points is not None:
            points.feature_defaults["label"] = C.NEGATIVE if negative else C.POSITIVE

    def _on_slice_changed(self, _event: Any = None) -> None:
        layer = self.image_layer
        if layer is None or self.model is None:
            return
        key = current_key(self.viewer, layer)
        if self._cached(layer, key) is None and self._embed_worker is None:
            self.compute_embeddings(keys=[key])

    # ------------------------------------------------------------------ embeddings

    def _model_request(self) -> tuple[str, str]:
        return self.model_combo.currentText().strip(), self.device_combo.currentText()

    def _cached(
        self, layer, key: SliceKey, signature: str | None = None
    ) -> tuple[str, ImageEmbedding] | None:
        """The stored (signature, embedding) of a slice if it still matches the pixels.

        ``signature`` is the plane's content hash when the caller has it already.
        """
        hit = self._embeddings.get((layer.unique_id, key))
        if hit is None:
            return None
        if signature is None:
            signature = plane_signature(plane(layer, key))
        return hit if hit[0] == signature else None  # data changed: never serve it stale

    def compute_embeddings(self, keys: list[SliceKey] | None = None):
        """Start encoding ``keys`` (default: the current slice, then the rest) in the background.

        Returns the worker (or ``None`` when nothing needs doing).
        """
        layer = self.image_layer
        if layer is None:
            show_warning("SAM-HQ: open an image layer first (and pick it in the Image box)")
            return None
        if self._embed_worker is not None:
            show_info("SAM-HQ: embeddings are already being computed")
            return None
        if keys is None:
            here = current_key(self.viewer, layer)
            keys = sorted(all_keys(layer), key=lambda k: (sum(abs(a - b) for a, b in zip(k, here)), k))
        self._ensure_prompt_layers(layer)
        request = self._model_request()
        model = self.model if request == self._model_key else None
        worker = self._embed_job(layer, keys, request, model)
        worker.yielded.connect(self._on_embed_yielded)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_embed_finished)
        self._embed_worker, self._embed_layer = worker, layer
        self.compute_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setValue(0)
        self.status_label.setText("Computing embeddings…")
        worker.start()
        return worker

    @thread_worker
    def _embed_job(self, layer, keys: list[SliceKey], request: tuple[str, str], model):
        from ..engine import SamHQPredictor
        from ..model import load_model

        if model is None:
            yield ("status", f"Loading {request[0]}…")
            try:
                model = load_model(request[0], device=request[1])
            except (ValueError, RuntimeError, OSError) as err:  # bad file, no download, no device
                yield ("error", str(err))
                return
            yield ("model", request, model)
        predictor = SamHQPredictor(model)
        for i, key in enumerate(keys):
            data = plane(layer, key)
            signature = plane_signature(data)
            if self._cached(layer, key, signature) is not None:
                yield ("progress", (i + 1) / len(keys), key)
                continue
            for fraction in predictor.iter_set_image(data):
                yield ("progress", (i + fraction) / len(keys), key)
            yield ("embedding", layer, key, signature, predictor.get_image_embedding())

    def _on_embed_yielded(self, message: tuple) -> None:
        kind = message[0]
        if kind == "status":
            self.status_label.setText(message[1])
        elif kind == "error":
            self._report_error(message[1])
        elif kind == "model":
            self._model_key, self.model = message[1], message[2]
            self._embeddings.clear()
            show_info(f"SAM-HQ: loaded {self.model.name} on {self.model.device}")
        elif kind == "progress":
            self.progress_bar.setValue(int(1000 * message[1]))
        elif kind == "embedding":
            _, layer, key, signature, emb = message
            self._embeddings[(layer.unique_id, key)] = (signature, emb)
            where = f" (slice {key[0] if len(key) == 1 else key})" if key else ""
            self.status_label.setText(f"Embedding ready{where}. Click to add points, draw boxes.")
            self.request_preview()

    def _on_embed_finished(self) -> None:
        self._embed_worker = None
        self._embed_layer = None
        self.compute_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def cancel(self) -> None:
        """Stop the embedding worker between two encoder steps."""
        if self._embed_worker is not None:
            self._embed_worker.quit()
            self.status_label.setText("Cancelled.")
            self.progress_bar.setValue(0)

    def _on_worker_error(self, err: Exception) -> None:
        self._report_error(str(err))

    def _report_error(self, message: str) -> None:
        show_error(f"SAM-HQ: {message}")
        self.status_label.setText(f"Error: {message}")

    # ------------------------------------------------------------------ preview

    def request_preview(self) -> None:
        """Decode the current prompts (coalesced: at most one decode runs at a time)."""
        if self._decode_worker is not None:
            self._decode_dirty = True
            return
        layer = self.image_layer
        if layer is None or self.model is None:
            return
        n = leading_ndim(layer)
        shape = spatial_shape(layer)
        yx_axes = tuple(range(self.viewer.dims.ndim - 2, self.viewer.dims.ndim))
        if n and tuple(self.viewer.dims.displayed) != yx_axes:
            show_warning(
                "SAM-HQ segments Y-X planes (the last two axes); the viewer shows other axes. "
                "Use 'Roll dimensions'/'Transpose' to view the last two axes, or reorder the data."
            )
            return
        prompts, warnings = collect_prompts(*self._prompt_layers(), n, shape[n : n + 2])
        for w in warnings:
            show_warning(f"SAM-HQ: {w}")
        jobs, missing = {}, []
        for key, p in prompts.items():
            objects = p.objects()
            if not objects:
                continue
            hit = self._cached(layer, key)
            if hit is None:
                missing.append(key)
            else:
                jobs[key] = ((layer.unique_id, key, hit[0]), hit[1], objects)
        if missing and self._embed_worker is None:
            self.compute_embeddings(keys=missing)  # compute it, don't fail
        worker = self._decode_job(
            self.model, jobs, self.multimask_check.isChecked(), self.hq_only_check.isChecked()
        )
        worker.returned.connect(self._on_decoded)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_decode_finished)
        self._decode_worker = worker
        self._decode_dirty = False
        worker.start()

    @thread_worker
    def _decode_job(self, model, jobs, multimask: bool, hq_only: bool):
        from ..engine import SamHQPredictor

        out = {}
        for key, (ready_key, emb, objects) in jobs.items():
            predictor = self._ready.pop(ready_key, None)
            if predictor is None or predictor.model is not model:
                predictor = SamHQPredictor(model)
                predictor.set_image_embedding(emb)
            self._ready[ready_key] = predictor
            while len(self._ready) > READY_SLICES:
                self._ready.popitem(last=False)
            try:
                results = _predict_objects(predictor, objects, multimask=multimask, hq_only=hq_only)
            except ValueError as err:  # a prompt the engine refuses: say which, keep the rest
                out[key] = ("error", str(err))
                continue
            out[key] = [(m, s, "box" not in o) for (m, s), o in zip(results, objects)]
        return out

    def _on_decoded(self, result: dict) -> None:
        for key, value in list(result.items()):
            if isinstance(value, tuple):
                self._report_error(f"slice {key}: {value[1]}" if key else value[1])
                del result[key]
        self._preview_objects = result
        layers = self.viewer.layers
        if C.PREVIEW_LAYER not in layers:
            return
        preview = layers[C.PREVIEW_LAYER]
        data = np.zeros(preview.data.shape, preview.data.dtype)
        scores = []
        for key, objects in result.items():
            target = data[key] if key else data
            for i, (mask, score, _points_only) in enumerate(objects):
                target[mask & (target == 0)] = i + 1
                scores.append(score)
        preview.data = data
        if scores:
            self.status_label.setText(
                f"Preview: {len(scores)} object(s), predicted IoU "
                + ", ".join(f"{s:.2f}" for s in scores[:8])
                + (" …" if len(scores) > 8 else "")
            )

    def _on_decode_finished(self) -> None:
        self._decode_worker = None
        if self._decode_dirty:
            self.request_preview()

    # ------------------------------------------------------------------ commit

    def _target_labels(self, image) -> napari.layers.Labels:
        name = self.labels_combo.currentText() or C.LABELS_LAYER
        layers = self.viewer.layers
        if name in layers and isinstance(layers[name], Labels):
            target = layers[name]
            if target.data.shape != spatial_shape(image):
                raise ValueError(
                    f"labels layer '{name}' has shape {target.data.shape}, the image {spatial_shape(image)}: "
                    f"pick another labels layer or remove it so '{C.LABELS_LAYER}' is created"
                )
            return target
        ndim = len(spatial_shape(image))
        target = self.viewer.add_labels(
            np.zeros(spatial_shape(image), np.uint32), name=C.LABELS_LAYER,
            scale=image.scale[:ndim], translate=image.translate[:ndim],
        )
        self.labels_combo.setCurrentText(C.LABELS_LAYER)
        return target

    def commit(self) -> list[int]:
        """Write the previewed objects into the labels layer as new ids (``write_objects``)."""
        image = self.image_layer
        if image is None or not self._preview_objects:
            show_info("SAM-HQ: nothing to commit: add prompts and wait for the preview")
            return []
        try:
            target = self._target_labels(image)
        except ValueError as err:
            show_error(f"SAM-HQ: {err}")
            return []
        written = write_objects(target, self._preview_objects, overwrite=self.overwrite_check.isChecked())
        self.clear_prompts()
        self.status_label.setText(f"Committed {len(written)} object(s): ids {written[:10]}")
        return written

    def undo(self) -> None:
        name = self.labels_combo.currentText()
        if name in self.viewer.layers:
            self.viewer.layers[name].undo()

    def clear_prompts(self) -> None:
        points, boxes = self._prompt_layers()
        if points is not None and len(points.data):
            points.data = np.empty((0, points.ndim))
        if boxes is not None and len(boxes.data):
            boxes.data = []
        self._preview_objects = {}
        if C.PREVIEW_LAYER in self.viewer.layers:
            preview = self.viewer.layers[C.PREVIEW_LAYER]
            preview.data = np.zeros_like(preview.data)

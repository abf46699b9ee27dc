"""The SAM-HQ dock widget: embeddings in the background, prompts, preview, commit, undo,
propagation through stacks.

Threads: model loading and embeddings run in a ``thread_worker`` generator that takes
slices from a queue (the slice on screen jumps to the front, its neighbours follow:
prefetch; progress; cancel between encoder steps); decoding runs in a second worker,
coalesced so only the latest prompts are decoded; propagation in a third. Layers change
only on the GUI thread, in the workers' ``yielded`` / ``returned`` handlers. Embeddings
go through an ``EmbeddingStore`` on disk (the cache folder unless the user picks one),
so reopening an image is instant and RAM stays bounded. All state lives on the widget:
two viewers, two widgets, nothing shared but the (read-only) model weights.
"""

from __future__ import annotations

import threading
import time
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
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import constants as C
from .commit import write_into, write_objects
from .layers import SliceKey, all_keys, collect_prompts, current_key, leading_ndim, spatial_shape
from .tools import MeasureTool, PropagationTool, SegmentEverythingTool

if TYPE_CHECKING:
    import napari

    from ..engine import EmbeddingStore, SegmentationSession
    from ..model import SamHQ


class SamHQWidget(PropagationTool, SegmentEverythingTool, MeasureTool, QWidget):
    """Dock widget; its controls are attributes so scripts and tests can drive it.

    The prompt workflow (embeddings, preview, commit) lives here; propagation, segment
    everything and measurement are in ``tools`` (one class each, mixed in).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        # --- session state
        self.model: SamHQ | None = None
        self._model_key: tuple[str, str] | None = None
        self._store: EmbeddingStore | None = None
        self._store_key: str | None = None
        # layer.unique_id -> (what the session was built from, session). A plugin sees layers
        # through proxies, so id() is not stable; unique_id is.
        self._sessions: dict[Any, tuple[tuple, SegmentationSession]] = {}
        self._session_lock = threading.Lock()
        self._queue: list[tuple[Any, SliceKey]] = []  # (image layer, slice) to encode, next first
        self._queue_lock = threading.Lock()
        self._embed_worker = None
        self._decode_worker = None
        self._decode_dirty = False
        self._errors: list[Exception] = []  # errors reported to the user, not yet raised by wait()
        self._preview_objects: dict[SliceKey, list[tuple[np.ndarray, float, bool]]] = {}
        # labels layer uid -> {label id: slices the user committed} (the propagation seeds)
        self._committed: dict[Any, dict[int, set[SliceKey]]] = {}
        self._build_ui()
        self._connect_viewer()
        self._refresh_layers()
        if self.image_layer is not None:
            self._on_image_changed()

    # ------------------------------------------------------------------ UI

    def _build_tools(self) -> list:
        return [self._build_propagation(), self._build_segment_everything(), *self._build_measure()]

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
        # embeddings: where they are kept, tiles for large planes
        self.store_edit = QLineEdit()
        self.store_edit.setPlaceholderText("cache folder (default)")
        self.store_edit.setToolTip(
            "Folder of the embedding store (zarr). Empty: the cache folder. 'none': keep embeddings "
            "in RAM only. Reopening an image with the same model reuses stored embeddings."
        )
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(256, 4096)
        self.tile_spin.setSingleStep(128)
        self.tile_spin.setValue(C.TILE_SIZE)
        self.tile_spin.setToolTip("Planes larger than this are embedded as overlapping tiles")
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 2048)
        self.overlap_spin.setSingleStep(32)
        self.overlap_spin.setValue(C.TILE_OVERLAP)
        self.overlap_spin.setToolTip("Objects up to this size always fit in one tile (at most half the tile)")

        form = QFormLayout()
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        form.addRow("Model", model_row)
        form.addRow("Device", self.device_combo)
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow("Store", self.store_edit)
        tiles_row = QHBoxLayout()
        tiles_row.addWidget(self.tile_spin)
        tiles_row.addWidget(QLabel("overlap"))
        tiles_row.addWidget(self.overlap_spin)
        form.addRow("Tiles", tiles_row)
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
        for box in self._build_tools():
            layout.addWidget(box) if isinstance(box, QWidget) else layout.addLayout(box)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self.browse_button.clicked.connect(self._browse)
        self.compute_button.clicked.connect(lambda: self.compute_embeddings())
        self.cancel_button.clicked.connect(self.cancel)
        self.commit_button.clicked.connect(lambda: self.commit())
        self.undo_button.clicked.connect(self.undo)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.store_edit.editingFinished.connect(self._on_options_changed)
        self.tile_spin.valueChanged.connect(lambda _: self._on_options_changed())
        self.overlap_spin.valueChanged.connect(lambda _: self._on_options_changed())
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
        with self._queue_lock:
            queued = len(self._queue)
            self._queue[:] = [(lay, k) for lay, k in self._queue if lay.unique_id != removed.unique_id]
            if len(self._queue) < queued:
                show_warning(f"SAM-HQ: image layer '{removed.name}' was removed; its embeddings are no longer computed")
        with self._session_lock:
            self._sessions.pop(removed.unique_id, None)
        self._committed.pop(removed.unique_id, None)
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
        """The slice on screen goes to the front of the queue, its neighbours after it."""
        layer = self.image_layer
        if layer is None or self.model is None:
            return
        here = current_key(self.viewer, layer)
        lead = layer.data.shape[: leading_ndim(layer)]
        near = [here]
        for d in range(1, C.PREFETCH + 1):
            for axis in range(len(here)):
                for step in (-d, d):
                    k = list(here)
                    k[axis] += step
                    if 0 <= k[axis] < lead[axis]:
                        near.append(tuple(k))
        self.compute_embeddings(keys=near)

    # ------------------------------------------------------------------ embeddings

    def _model_request(self) -> tuple[str, str]:
        return self.model_combo.currentText().strip(), self.device_combo.currentText()

    def _on_options_changed(self) -> None:
        """Store or tile options changed: sessions are rebuilt on next use (stored
        embeddings stay valid: their keys do not depend on these options)."""
        with self._session_lock:
            self._sessions.clear()

    def store(self) -> EmbeddingStore:
        """The embedding store the options name (opened once per choice)."""
        from ..engine import EmbeddingStore, default_store_root

        text = self.store_edit.text().strip()
        if self._store is None or self._store_key != text:
            if text.lower() == "none":
                self._store = EmbeddingStore(None, max_in_memory=C.STORE_RAM_ENTRIES)
            else:
                root = text or default_store_root()
                try:
                    self._store = EmbeddingStore(root, max_in_memory=C.STORE_RAM_ENTRIES)
                except (ValueError, OSError) as err:
                    self._report_error(f"{err}. Embeddings are kept in RAM for now.", recoverable=True)
                    self._store = EmbeddingStore(None, max_in_memory=C.STORE_RAM_ENTRIES)
            self._store_key = text
        return self._store

    def session(self, layer: napari.layers.Image | None = None, model: SamHQ | None = None) -> SegmentationSession:
        """The engine session of ``layer`` (default: the chosen image) with ``model``."""
        from ..engine import SegmentationSession

        layer = layer or self.image_layer
        model = model or self.model
        if layer is None or model is None:
            raise RuntimeError("pick an image and compute embeddings first")
        store = self.store()
        spec = (id(model), id(layer.data), layer.rgb, id(store), self.tile_spin.value(), self.overlap_spin.value())
        with self._session_lock:
            hit = self._sessions.get(layer.unique_id)
            if hit is None or hit[0] != spec:
                overlap = min(self.overlap_spin.value(), self.tile_spin.value() // 2)
                session = SegmentationSession(
                    model, layer.data, rgb=layer.rgb, store=store,
                    tile_size=self.tile_spin.value(), overlap=overlap, max_ready=C.READY_TILES,
                )
                hit = self._sessions[layer.unique_id] = (spec, session)
            return hit[1]

    def _is_ready(self, layer, key: SliceKey) -> bool:
        if self.model is None:
            return False
        try:
            return self.session(layer).is_ready(key)
        except (ValueError, OSError):
            return False

    def _enqueue(self, layer, keys: list[SliceKey]) -> None:
        """Put ``keys`` of ``layer`` at the front of the encoding queue, in this order."""
        with self._queue_lock:
            new = list(dict.fromkeys(keys))
            rest = [(lay, k) for lay, k in self._queue if not (lay.unique_id == layer.unique_id and k in new)]
            self._queue[:] = [(layer, k) for k in new] + rest

    def _next_key(self) -> tuple[Any, SliceKey | None, int]:
        with self._queue_lock:
            if not self._queue:
                return None, None, 0
            layer, key = self._queue.pop(0)
            return layer, key, len(self._queue)

    def compute_embeddings(self, keys: list[SliceKey] | None = None):
        """Encode ``keys`` (default: the current slice, then the rest, nearest first) of the
        chosen image in the background; slices already in the store are skipped. While a
        job runs, ``keys`` go to the front of its queue (whichever image they belong to).

        Returns the worker (or ``None`` when none could start).
        """
        layer = self.image_layer
        if layer is None:
            show_warning("SAM-HQ: open an image layer first (and pick it in the Image box)")
            return None
        if keys is None:
            here = current_key(self.viewer, layer)
            keys = sorted(all_keys(layer), key=lambda k: (sum(abs(a - b) for a, b in zip(k, here, strict=True)), k))
        if self._embed_worker is not None:
            self._enqueue(layer, keys)
            return self._embed_worker
        self._ensure_prompt_layers(layer)
        with self._queue_lock:
            self._queue[:] = []
        self._enqueue(layer, keys)
        request = self._model_request()
        model = self.model if request == self._model_key else None
        worker = self._embed_job(request, model)
        worker.yielded.connect(self._on_embed_yielded)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_embed_finished)
        self._embed_worker = worker
        self.compute_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setValue(0)
        self.status_label.setText("Computing embeddings…")
        worker.start()
        return worker

    @thread_worker
    def _embed_job(self, request: tuple[str, str], model):
        from ..model import load_model

        if model is None:
            yield ("status", f"Loading {request[0]}…")
            try:
                model = load_model(request[0], device=request[1])
            except (ValueError, RuntimeError, OSError) as err:  # bad file, no download, no device
                yield ("error", str(err))
                return
            yield ("model", request, model)
        done = 0
        while True:
            layer, key, left = self._next_key()
            if key is None:
                return
            if layer not in self.viewer.layers:
                continue  # removed while queued
            session = self.session(layer, model)
            total = done + 1 + left
            try:
                for fraction, _ in session.iter_embed([key]):
                    yield ("progress", (done + fraction) / total, key)
            except (ValueError, IndexError) as err:  # an unusable plane: say so, go on with the rest
                yield ("error", f"slice {key}: {err}" if key else str(err))
            else:
                yield ("embedding", layer, key)
            done += 1

    def _on_embed_yielded(self, message: tuple) -> None:
        kind = message[0]
        if kind == "status":
            self.status_label.setText(message[1])
        elif kind == "error":
            self._report_error(message[1])
        elif kind == "model":
            self._model_key, self.model = message[1], message[2]
            with self._session_lock:
                self._sessions.clear()
            show_info(f"SAM-HQ: loaded {self.model.name} on {self.model.device}")
        elif kind == "progress":
            self.progress_bar.setValue(int(1000 * message[1]))
        elif kind == "embedding":
            _, layer, key = message
            where = f" (slice {key[0] if len(key) == 1 else key})" if key else ""
            self.status_label.setText(f"Embedding ready{where}. Click to add points, draw boxes.")
            self.request_preview()

    def _on_embed_finished(self) -> None:
        self._embed_worker = None
        self.compute_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def cancel(self) -> None:
        """Stop the embedding and propagation workers between two steps."""
        with self._queue_lock:
            self._queue[:] = []
        if self._propagate_worker is not None:
            self._propagate_worker.quit()
        if self._auto_worker is not None:
            self._auto_worker.quit()
        if self._embed_worker is not None:
            self._embed_worker.quit()
            self.status_label.setText("Cancelled.")
            self.progress_bar.setValue(0)

    def _on_worker_error(self, err: Exception) -> None:
        self._report_error(str(err), err)

    @property
    def busy(self) -> bool:
        """Whether background work runs: model load and embeddings, a decode, a propagation
        or segment everything."""
        workers = (self._embed_worker, self._decode_worker, self._propagate_worker, self._auto_worker)
        return any(w is not None for w in workers)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the background work started so far is done, processing Qt events so
        that it can finish (its results land in the layers on this thread); then raise the
        first error a worker met since the last ``wait``. For scripts and tests: a prompt
        added from code starts its decode at once, so ``wait()`` after it returns with the
        preview drawn. Errors include those only shown to a user (a checkpoint that does not
        load, a prompt the engine refuses). ``TimeoutError`` after ``timeout`` seconds
        (``None``: no limit)."""
        from qtpy.QtCore import QCoreApplication

        end = None if timeout is None else time.monotonic() + timeout
        while self.busy:
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"SAM-HQ: background work still running after {timeout} s")
            QCoreApplication.processEvents()
            time.sleep(0.005)
        QCoreApplication.processEvents()  # the last 'finished' handlers
        errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    def _report_error(self, message: str, err: Exception | None = None, *, recoverable: bool = False) -> None:
        """Show an error to the user; unless the work went on regardless (``recoverable``),
        ``wait()`` raises it to a script: ``err``, or a ``RuntimeError`` with the message for
        errors a worker reported without raising."""
        if not recoverable:
            self._errors.append(err if err is not None else RuntimeError(message))
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
            if self._is_ready(layer, key):
                jobs[key] = objects
            else:
                missing.append(key)
        if missing:
            self.compute_embeddings(keys=missing)  # compute it first, don't fail
        worker = self._decode_job(
            self.session(layer), jobs, self.multimask_check.isChecked(), self.hq_only_check.isChecked()
        )
        worker.returned.connect(self._on_decoded)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_decode_finished)
        self._decode_worker = worker
        self._decode_dirty = False
        worker.start()

    @thread_worker
    def _decode_job(self, session: SegmentationSession, jobs, multimask: bool, hq_only: bool):
        out = {}
        for key, objects in jobs.items():
            try:
                results = session.segment(key, objects, multimask_output=multimask, hq_token_only=hq_only)
            except ValueError as err:  # a prompt the engine refuses: say which, keep the rest
                out[key] = ("error", str(err))
                continue
            out[key] = [(r.mask, r.score, "box" not in o) for r, o in zip(results, objects, strict=True)]
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
        overwrite = self.overwrite_check.isChecked()
        committed = self._committed.setdefault(target.unique_id, {})
        if self.into_selected_check.isChecked():
            label = int(target.selected_label)
            try:
                keys = write_into(target, self._preview_objects, label, overwrite=overwrite)
            except ValueError as err:
                show_error(f"SAM-HQ: {err}")
                return []
            committed.setdefault(label, set()).update(keys)
            self.clear_prompts()
            self.status_label.setText(f"Corrected label {label} on {len(keys)} slice(s). Propagate to follow it.")
            return [label]
        written = write_objects(target, self._preview_objects, overwrite=overwrite)
        for label, keys in written.items():
            committed.setdefault(label, set()).update(keys)
        ids = list(written)
        self.clear_prompts()
        self.status_label.setText(f"Committed {len(ids)} object(s): ids {ids[:10]}")
        return ids

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

"""The SAM-HQ dock widget: binds napari layers and Qt controls to one ``Annotator`` per
image (``engine.annotator``), which holds the annotation state and logic.

Threads: model loading (with download progress) and encoding run in a ``thread_worker``
generator that takes tiles from the annotators' queues (the chosen image first; the tile
under a prompt before the rest of its plane; the slice on screen and its neighbours
next); decoding runs in a second worker, coalesced so only the latest prompts are
decoded; propagation and segment everything in their own. Layers change only on the GUI
thread, in the workers' ``yielded`` / ``returned`` handlers. The preview layer holds only
the objects' box on the plane on screen, so a prompt costs the same on a 2D image and on a
stack of any size. Labels larger than a threshold live in a zarr array on disk. All state
lives on the widget and its annotators: two viewers, two widgets, nothing shared but the
(read-only) model weights.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine import memory
from . import constants as C
from .adapt import AdaptTool, RefineTool
from .jobs import process_events_until, torch_job
from .layers import (
    LayerLabels,
    SliceKey,
    all_keys,
    collect_prompts,
    current_key,
    image_data,
    orientation_of,
    spatial_shape,
)
from .tools import MeasureTool, PropagationTool, SegmentEverythingTool

if TYPE_CHECKING:
    import napari

    from ..engine import EmbeddingStore, SegmentationSession
    from ..engine.annotator import Annotator
    from ..model import SamHQ


class SamHQWidget(PropagationTool, SegmentEverythingTool, AdaptTool, RefineTool, MeasureTool, QWidget):
    """Dock widget; its controls are attributes so scripts and tests can drive it.

    The prompt workflow (embeddings, preview, commit) is bound here; propagation, segment
    everything and measurement are in ``tools``, adaptation and refinement in ``adapt``
    (one class each, mixed in). The state is in
    ``annotator(layer)``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: SamHQ | None = None
        self._model_key: tuple[str, str] | None = None
        self._store: EmbeddingStore | None = None
        self._store_key: str | None = None
        # image layer.unique_id -> (what the annotator was built from, annotator). A plugin sees
        # layers through proxies, so id() is not stable; unique_id is.
        self._annotators: dict[Any, tuple[tuple, Annotator]] = {}
        self._bindings: dict[Any, LayerLabels] = {}  # labels layer.unique_id -> its LabelVolume
        self._lock = threading.RLock()
        self._embed_worker = None
        self._embed_said = ""  # the status the encoding set last: it replaces only its own
        self._decode_worker = None
        self._decode_dirty = False
        self._errors: list[Exception] = []  # errors reported to the user, not yet raised by wait()
        memory.limit_arenas()  # before the workers' threads first allocate (engine/memory.py)
        self._build_ui()
        self._connect_viewer()
        self._refresh_layers()
        if self.image_layer is not None:
            self._on_image_changed()

    # ------------------------------------------------------------------ UI

    def _build_tools(self) -> list:
        return [self._build_propagation(), self._build_segment_everything(), self._build_adapt(),
                self._build_refine(), *self._build_measure()]

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
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last change of the labels layer (Ctrl+Z in the layer works too)")
        self.redo_button = QPushButton("Redo")
        self.clear_button = QPushButton(f"Clear prompts ({C.KEY_CLEAR})")
        self.status_label = QLabel("Pick an image and click on an object (the model loads then).")
        self.status_label.setWordWrap(True)
        self.store_edit = QLineEdit()
        self.store_edit.setPlaceholderText("cache folder (default)")
        self.store_edit.setToolTip(
            "Folder of the embedding store (zarr). Empty: the cache folder. 'none': keep embeddings "
            "in RAM only. Reopening an image with the same model reuses stored embeddings."
        )
        self.labels_dir_edit = QLineEdit()
        self.labels_dir_edit.setPlaceholderText("next to the store (default)")
        self.labels_dir_edit.setToolTip(
            f"Folder for '{C.LABELS_LAYER}' kept on disk (<image>.labels.zarr); reopening the image opens them"
        )
        self.disk_threshold_spin = QDoubleSpinBox()
        self.disk_threshold_spin.setRange(0.0, 1024.0)
        self.disk_threshold_spin.setDecimals(2)
        self.disk_threshold_spin.setSuffix(" GB")
        self.disk_threshold_spin.setValue(C.LABELS_DISK_GB)
        self.disk_threshold_spin.setToolTip(
            f"New '{C.LABELS_LAYER}' larger than this (as a dense array) live on disk, chunk by chunk; 0: always"
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
        disk_row = QHBoxLayout()
        disk_row.addWidget(self.labels_dir_edit, 1)
        disk_row.addWidget(QLabel("above"))
        disk_row.addWidget(self.disk_threshold_spin)
        form.addRow("Labels on disk", disk_row)
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
        commit_row.addWidget(self.redo_button)
        # everything scrolls: with the tool boxes the dock is taller than most screens
        content = QWidget()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the table scrolls itself
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
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
        self.redo_button.clicked.connect(self.redo)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.store_edit.editingFinished.connect(self._on_options_changed)
        self.labels_dir_edit.editingFinished.connect(self._on_options_changed)
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
        v.dims.events.order.connect(self._on_orientation_changed)
        v.dims.events.ndisplay.connect(self._on_orientation_changed)
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
        with self._lock:
            hit = self._annotators.pop(removed.unique_id, None)
            self._bindings.pop(removed.unique_id, None)
        if hit is not None and hit[1].pending:
            hit[1].cancel_encoding()
            show_warning(f"SAM-HQ: image layer '{removed.name}' was removed; its embeddings are no longer computed")
        self._refresh_layers()

    def _on_image_changed(self) -> None:
        layer = self.image_layer
        if layer is None:
            return
        self._ensure_prompt_layers(layer)
        self._offer_saved_labels(layer)
        if not layer.rgb and len(spatial_shape(layer)) >= 3 and spatial_shape(layer)[0] <= 4:
            show_info(
                f"SAM-HQ: '{layer.name}' has {spatial_shape(layer)[0]} planes along its first axis. If these are "
                "channels, not slices, open them as separate layers (channel_axis) and pick one, or "
                "make an RGB layer; SAM-HQ treats the first axis as slices."
            )

    def _ensure_prompt_layers(self, image: napari.layers.Image) -> None:
        """Points, boxes and preview layers matching the image's data frame (created once)."""
        import pandas as pd

        ndim = len(spatial_shape(image))
        frame = dict(scale=image.scale[-ndim:], translate=image.translate[-ndim:])
        layers = self.viewer.layers
        if C.POINTS_LAYER not in layers or layers[C.POINTS_LAYER].ndim != ndim:
            if C.POINTS_LAYER in layers:
                layers.remove(C.POINTS_LAYER)
            features = pd.DataFrame({"label": pd.Categorical([], categories=[C.POSITIVE, C.NEGATIVE])})
            points = self.viewer.add_points(
                np.empty((0, ndim)), name=C.POINTS_LAYER, features=features, size=10, ndim=ndim,
                face_color=C.POSITIVE_COLOR, border_color="white", **frame,
            )
            points.feature_defaults["label"] = C.NEGATIVE if self.negative_check.isChecked() else C.POSITIVE
            points.events.data.connect(self._on_points_changed)
            points.mode = "add"
        if C.BOXES_LAYER not in layers or layers[C.BOXES_LAYER].ndim != ndim:
            if C.BOXES_LAYER in layers:
                layers.remove(C.BOXES_LAYER)
            boxes = self.viewer.add_shapes(
                name=C.BOXES_LAYER, edge_color="yellow", face_color="transparent", edge_width=2, ndim=ndim, **frame
            )
            boxes.events.data.connect(self._on_boxes_changed)
        if C.PREVIEW_LAYER not in layers or layers[C.PREVIEW_LAYER].ndim != ndim:
            if C.PREVIEW_LAYER in layers:
                layers.remove(C.PREVIEW_LAYER)
            preview = self.viewer.add_labels(_no_preview(ndim), name=C.PREVIEW_LAYER, opacity=0.5, **frame)
            preview.visible = False
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

    # ------------------------------------------------------------------ the displayed plane

    def _oriented(self, layer=None) -> tuple[Annotator, SliceKey] | None:
        """The annotator of ``layer`` turned to the plane on screen, and the slice shown;
        ``None`` (after a warning) in 3D display."""
        layer = layer or self.image_layer
        if layer is None:
            return None
        orientation = orientation_of(self.viewer, layer)
        if orientation is None:
            show_warning("SAM-HQ segments the plane on screen: switch the viewer to 2D display")
            return None
        ann = self.annotator(layer)
        if ann.set_orientation(orientation.plane_axes):
            self._draw_preview()
        return ann, current_key(self.viewer, layer, orientation)

    def _view_centre(self, layer, ann) -> tuple[float, float] | None:
        """The point at the centre of the view, in plane (x, y) pixels of ``ann``'s orientation."""
        ndim = len(spatial_shape(layer))
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 (viewer.camera is deprecated there)
        camera = scene.camera if scene is not None else self.viewer.camera
        centre = np.asarray(camera.center)[-2:]
        point = np.asarray(self.viewer.dims.point, float).copy()
        point[list(self.viewer.dims.displayed)] = centre
        data = np.asarray(layer.world_to_data(point[-ndim:]))
        row, col = ann.orientation.plane_axes
        return float(data[col]), float(data[row])

    def _on_slice_changed(self, _event: Any = None) -> None:
        """The slice on screen goes to the front of the queue (the tile at the centre of the
        view first), its neighbours after it (on a tiled plane only the tile in view: a
        4096 px plane has 25); its preview (if it has prompts) is drawn."""
        layer = self.image_layer
        if layer is None:
            return
        found = self._oriented(layer)
        if found is None:
            return
        ann, here = found
        self._draw_preview()
        if self.model is None:
            return
        lead = ann.lead_shape
        near = []
        for d in range(1, C.PREFETCH + 1):
            for axis in range(len(here)):
                for step in (-d, d):
                    k = list(here)
                    k[axis] += step
                    if 0 <= k[axis] < lead[axis]:
                        near.append(tuple(k))
        centre = self._view_centre(layer, ann)
        if ann.session.grid.tiled:  # neighbours of a tiled plane: the tile in the view only
            ann.request(near, tiles=ann.session.tiles_by_distance(centre)[:1], near=centre)
        else:
            ann.request(near, near=centre)
        ann.request([here], near=centre)  # the slice on screen before them, its tile in view first
        self._start_encoding()

    def _on_orientation_changed(self, _event: Any = None) -> None:
        """Transpose, Roll or 2D/3D: segment the new plane (embeddings per orientation stay stored)."""
        layer = self.image_layer
        if layer is None or orientation_of(self.viewer, layer) is None:
            return
        self._on_slice_changed()
        self.request_preview()

    # ------------------------------------------------------------------ model, store, annotators

    def _model_request(self) -> tuple[str, str]:
        return self.model_combo.currentText().strip(), self.device_combo.currentText()

    def _on_options_changed(self) -> None:
        """Store or tile options changed: annotators are rebuilt on next use (stored
        embeddings stay valid: their keys do not depend on these options); labels saved in
        the (new) folder are offered."""
        with self._lock:
            self._annotators.clear()
        if self.image_layer is not None:
            self._offer_saved_labels(self.image_layer)

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
                    self._store = EmbeddingStore(root, max_in_memory=C.STORE_RAM_ENTRIES_ON_DISK)
                except (ValueError, OSError) as err:
                    self._report_error(f"{err}. Embeddings are kept in RAM for now.", recoverable=True)
                    self._store = EmbeddingStore(None, max_in_memory=C.STORE_RAM_ENTRIES)
            self._store_key = text
        return self._store

    def annotator(self, layer: napari.layers.Image | None = None) -> Annotator:
        """The annotation state of ``layer`` (default: the chosen image): its queue, preview,
        orientation, sessions and labels. Scripts may drive it directly."""
        from ..engine.annotator import Annotator

        layer = layer or self.image_layer
        if layer is None:
            raise RuntimeError("pick an image layer first")
        store = self.store()
        data = image_data(layer)
        spec = (id(data), layer.rgb, id(store), self.tile_spin.value(), self.overlap_spin.value())
        with self._lock:
            hit = self._annotators.get(layer.unique_id)
            if hit is None or hit[0] != spec:
                overlap = min(self.overlap_spin.value(), self.tile_spin.value() // 2)
                ann = Annotator(
                    data, rgb=layer.rgb, model=self.model, store=store, tile_size=self.tile_spin.value(),
                    overlap=overlap, max_ready=C.READY_TILES,
                )
                hit = self._annotators[layer.unique_id] = (spec, ann)
            elif self.model is not None:
                hit[1].set_model(self.model)
            return hit[1]

    def session(self, layer: napari.layers.Image | None = None) -> SegmentationSession:
        """The engine session of ``layer`` (default: the chosen image) for the plane on screen."""
        found = self._oriented(layer)
        if found is None or self.model is None:
            raise RuntimeError("pick an image and compute embeddings first (the model loads then)")
        return found[0].session

    def _set_model(self, request: tuple[str, str], model) -> None:
        """Called from the worker once a model is loaded: every annotator uses it from now on."""
        with self._lock:
            self._model_key, self.model = request, model
            for _, ann in self._annotators.values():
                ann.set_model(model)

    # ------------------------------------------------------------------ embeddings

    def compute_embeddings(self, keys: list[SliceKey] | None = None):
        """Encode ``keys`` (default: the current slice, then the rest, nearest first) of the
        chosen image, in the plane on screen, in the background; stored tiles are skipped.
        While a job runs, ``keys`` go to the front of its queue.

        Returns the worker (or ``None`` when none could start).
        """
        layer = self.image_layer
        if layer is None:
            show_warning("SAM-HQ: open an image layer first (and pick it in the Image box)")
            return None
        found = self._oriented(layer)
        if found is None:
            return None
        ann, here = found
        if keys is None:
            keys = sorted(all_keys(spatial_shape(layer), ann.orientation),
                          key=lambda k: (sum(abs(a - b) for a, b in zip(k, here, strict=True)), k))
        ann.request(list(keys), near=self._view_centre(layer, ann))
        return self._start_encoding()

    def _start_encoding(self):
        if self._embed_worker is not None:
            return self._embed_worker
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
        self._say_embedding("Computing embeddings…")
        worker.start()
        return worker

    def _next_annotator(self):
        """The chosen image's annotator if it has work queued, else any other that has."""
        chosen = self.image_layer
        with self._lock:
            items = list(self._annotators.items())
        items.sort(key=lambda kv: chosen is None or kv[0] != chosen.unique_id)
        for uid, (_, ann) in items:
            if ann.pending:
                return uid, ann
        return None, None

    @torch_job
    def _embed_job(self, request: tuple[str, str], model):
        if model is None:
            model = yield from self._load_model(request)
            if model is None:
                return
        while True:
            uid, ann = self._next_annotator()
            if ann is None:
                return
            ann.set_model(model)
            for step in ann.encode_next():
                yield ("progress", step.fraction, uid, step)

    def _load_model(self, request: tuple[str, str]):
        """Download (with progress; Cancel stops it) and load; yields messages; returns the model."""
        from ..model import CHECKPOINTS, load_model
        from ..model.download import DownloadError, is_cached, iter_download

        name, device = request
        try:
            if name in CHECKPOINTS and not Path(name).exists() and not is_cached(CHECKPOINTS[name]):
                for done, total in iter_download(CHECKPOINTS[name]):
                    yield ("download", name, done, total)
            yield ("status", f"Loading {name}…")
            model = load_model(name, device=device)
        except (ValueError, RuntimeError, OSError, DownloadError) as err:  # bad file, no download, no device
            yield ("error", str(err))
            return None
        self._set_model(request, model)
        yield ("model", model)
        return model

    def _on_embed_yielded(self, message: tuple) -> None:
        kind = message[0]
        if kind == "status":
            self._say_embedding(message[1])
        elif kind == "error":
            self._report_error(message[1])
        elif kind == "download":
            _, name, done, total = message
            if total:
                self.progress_bar.setValue(int(1000 * done / total))
                self._say_embedding(f"Downloading {name}: {done / 2**20:.0f} of {total / 2**20:.0f} MB")
            else:
                self._say_embedding(f"Downloading {name}: {done / 2**20:.0f} MB")
        elif kind == "model":
            show_info(f"SAM-HQ: loaded {message[1].name} on {message[1].device}")
            self.request_preview()
        elif kind == "progress":
            _, fraction, uid, step = message
            if step.held:  # waiting for a propagation (segment everything): its progress shows
                return
            self.progress_bar.setValue(int(1000 * fraction))
            if not step.done:
                return
            layer = self.image_layer
            ours = layer is not None and layer.unique_id == uid
            if ours:
                ann = self.annotator(layer)
                if step.orientation != ann.orientation:
                    return
                waited = step.key in ann.waiting
                # the slice on screen, and only over the encoding's own message or for a prompt
                # that waits: a neighbour's prefetched tile, or the rest of this plane, would
                # overwrite what a preview or a tool just said ("Propagated ...")
                ours_said = self.status_label.text() == self._embed_said
                if step.key == current_key(self.viewer, layer, ann.orientation) and (ours_said or waited):
                    where = f" (slice {step.key[0] if len(step.key) == 1 else step.key})" if step.key else ""
                    self._say_embedding(f"Embedding ready{where}. Click to add points, draw boxes.")
                if waited:
                    self.request_preview()

    def _say_embedding(self, text: str) -> None:
        """Show the encoding's status (model load, download, embeddings)."""
        self._embed_said = text
        self.status_label.setText(text)

    def _on_embed_finished(self) -> None:
        self._embed_worker = None
        self.compute_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        with self._lock:
            more = any(ann.pending for _, ann in self._annotators.values())
        if more and self._model_request() == self._model_key:
            self._start_encoding()  # queued after the worker looked for the last time

    def cancel(self) -> None:
        """Stop the download, the encoding, propagation, segment everything, adaptation,
        refinement and a measurement between two steps (a stopped adaptation keeps nothing, a
        stopped refinement writes nothing, a stopped measurement shows nothing)."""
        with self._lock:
            for _, ann in self._annotators.values():
                ann.cancel_encoding()
        if self._propagate_worker is not None:
            self._propagate_worker.quit()
        for worker in (self._auto_worker, self._adapt_worker, self._refine_worker, self._measure_worker):
            if worker is not None:
                worker.quit()
        if self._embed_worker is not None:
            self._embed_worker.quit()
            self.status_label.setText("Cancelled.")
            self.progress_bar.setValue(0)

    def _on_worker_error(self, err: Exception) -> None:
        self._report_error(str(err), err)

    @property
    def busy(self) -> bool:
        """Whether background work runs: model load and embeddings, a decode, a propagation,
        segment everything, adaptation, refinement or a measurement."""
        workers = (self._embed_worker, self._decode_worker, self._propagate_worker, self._auto_worker,
                   self._adapt_worker, self._refine_worker, self._measure_worker)
        return any(w is not None for w in workers)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the background work started so far is done, processing Qt events so
        that it can finish (its results land in the layers on this thread); then raise the
        first error a worker met since the last ``wait``. For scripts and tests: a prompt
        added from code starts its decode at once (or the model load and the encoding it
        needs, then the decode), so ``wait()`` after it returns with the preview drawn.
        Errors include those only shown to a user (a checkpoint that does not load, a prompt
        the engine refuses). ``TimeoutError`` after ``timeout`` seconds (``None``: no limit)."""
        if not process_events_until(lambda: not self.busy, timeout=timeout):
            raise TimeoutError(f"SAM-HQ: background work still running after {timeout} s")
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
        """Decode the current prompts (coalesced: at most one decode runs at a time). Before a
        model is loaded, a prompt starts loading it and encoding the tile under it."""
        if self._decode_worker is not None:
            self._decode_dirty = True
            return
        layer = self.image_layer
        found = self._oriented(layer) if layer is not None else None
        if found is None:
            return
        ann, _ = found
        prompts, warnings = collect_prompts(*self._prompt_layers(), ann.orientation, ann.plane_shape)
        for w in warnings:
            show_warning(f"SAM-HQ: {w}")
        prompts = {k: p for k, p in prompts.items() if p.objects()}
        if self.model is None or self._model_request() != self._model_key:
            if prompts:  # load the model, encode the tiles under the prompts; decode after
                for key, p in prompts.items():
                    xy = (p.points or [((p.boxes[0][0] + p.boxes[0][2]) / 2, (p.boxes[0][1] + p.boxes[0][3]) / 2)])[0]
                    ann.request([key], near=xy)
                self._start_encoding()
            return
        worker = self._decode_job(ann, prompts, self.multimask_check.isChecked(), self.hq_only_check.isChecked())
        worker.yielded.connect(self._on_first_answers)
        worker.returned.connect(self._on_decoded)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_decode_finished)
        self._decode_worker = worker
        self._decode_dirty = False
        worker.start()

    @torch_job
    def _decode_job(self, ann: Annotator, prompts, multimask: bool, hq_only: bool):
        # a mask cut at a tile edge is shown (yielded) while the tile that holds it decodes it again
        return (yield from ann.iter_decode(prompts, multimask_output=multimask, hq_token_only=hq_only))

    def _on_first_answers(self, _preview) -> None:
        self._draw_preview()
        self.status_label.setText("Preview: refining a mask cut at a tile edge…")

    def _on_decoded(self, result: tuple) -> None:
        preview, errors = result
        for key, message in errors.items():
            self._report_error(f"slice {key}: {message}" if key else message)
        layer = self.image_layer
        waiting = layer is not None and bool(self.annotator(layer).waiting)
        if waiting:
            self._start_encoding()
        self._draw_preview()
        scores = [o.score for objects in preview.values() for o in objects]
        if scores:
            note = " (refining as tiles arrive)" if waiting else ""
            self.status_label.setText(
                f"Preview: {len(scores)} object(s), predicted IoU "
                + ", ".join(f"{s:.2f}" for s in scores[:8])
                + (" …" if len(scores) > 8 else "") + note
            )

    def _on_decode_finished(self) -> None:
        self._decode_worker = None
        if self._decode_dirty:
            self.request_preview()

    def _draw_preview(self) -> None:
        """The preview of the slice on screen into the preview layer: only its objects' box on
        that plane (size 1 on the slicing axes, placed by translate), nothing else."""
        layers = self.viewer.layers
        layer = self.image_layer
        if C.PREVIEW_LAYER not in layers or layer is None:
            return
        preview = layers[C.PREVIEW_LAYER]
        orientation = orientation_of(self.viewer, layer)
        if orientation is None:
            return
        ann = self.annotator(layer)
        ndim = len(spatial_shape(layer))
        here = current_key(self.viewer, layer, orientation)
        crop = ann.preview_crop(here) if ann.orientation == orientation else None
        if crop is None:
            if preview.data.size > 1:  # let go of the pixels and napari's textures of them: a
                # whole-plane preview at 4096 x 4096 kept 32 MB (and its textures) after its
                # commit. Before hiding: a hidden layer is not sliced again, and its old slice
                # would keep the pixels
                preview.data = _no_preview(ndim)
            preview.visible = False
            return
        (y0, x0), pixels = crop
        start = np.zeros(ndim)
        shape = [1] * ndim
        for axis, k in zip(orientation.lead_axes, here, strict=True):
            start[axis] = k
        row, col = orientation.plane_axes
        start[row], start[col] = y0, x0
        shape[row], shape[col] = pixels.shape
        data = pixels.reshape(shape) if row < col else pixels.T.reshape(shape)
        scale = np.asarray(layer.scale[-ndim:])
        translate = np.asarray(layer.translate[-ndim:]) + start * scale
        # each of these redraws the layer and updates the dims (~20 ms a set at 2048 x 2048):
        # set only what changed
        if not np.array_equal(preview.scale, scale):
            preview.scale = scale
        if not np.array_equal(preview.translate, translate):
            preview.translate = translate
        preview.data = data
        if not preview.visible:
            preview.visible = True

    # ------------------------------------------------------------------ labels

    def _labels_root(self, layer) -> Path:
        from ..engine import default_store_root

        text = self.labels_dir_edit.text().strip()
        if text:
            return Path(text).expanduser()
        store = self.store()
        return Path(store.root).parent if store.root is not None else Path(default_store_root()).parent

    def labels_path(self, layer: napari.layers.Image | None = None) -> Path:
        """Where '<image>.labels.zarr' of ``layer`` is kept when its labels live on disk."""
        from ..engine.labels import default_labels_path

        layer = layer or self.image_layer
        return default_labels_path(self._labels_root(layer), layer.name)

    def _offer_saved_labels(self, layer) -> None:
        """Reopening an image: its labels saved on disk come back as the labels layer."""
        from ..engine.labels import open_labels_zarr

        path = self.labels_path(layer)
        if not (path / "zarr.json").exists() or C.LABELS_LAYER in self.viewer.layers:
            return
        try:
            array = open_labels_zarr(path, spatial_shape(layer), create=False)
        except (ValueError, OSError) as err:
            show_warning(f"SAM-HQ: saved labels at {path} not opened: {err}")
            return
        self._add_labels_layer(layer, array)
        show_info(f"SAM-HQ: opened the saved labels of '{layer.name}' from {path}")

    def _add_labels_layer(self, image, data) -> napari.layers.Labels:
        ndim = len(spatial_shape(image))
        target = self.viewer.add_labels(
            data, name=C.LABELS_LAYER, scale=image.scale[-ndim:], translate=image.translate[-ndim:]
        )
        self.labels_combo.setCurrentText(C.LABELS_LAYER)
        self.viewer.layers.selection.active = self.viewer.layers[C.POINTS_LAYER] \
            if C.POINTS_LAYER in self.viewer.layers else target
        return target

    def _target_labels(self, image) -> napari.layers.Labels:
        """The labels layer objects go to (checked against the image); created when missing,
        on disk when a dense array would exceed the threshold."""
        from ..engine.labels import dense_nbytes, open_labels_zarr

        name = self.labels_combo.currentText() or C.LABELS_LAYER
        layers = self.viewer.layers
        shape = spatial_shape(image)
        if name in layers and isinstance(layers[name], Labels):
            target = layers[name]
            if tuple(target.data.shape) != shape:
                raise ValueError(
                    f"labels layer '{name}' has shape {tuple(target.data.shape)}, the image {shape}: "
                    f"pick another labels layer or remove it so '{C.LABELS_LAYER}' is created"
                )
            return target
        if dense_nbytes(shape) > self.disk_threshold_spin.value() * 2**30:
            path = self.labels_path(image)
            data = open_labels_zarr(path, shape)
            gb = dense_nbytes(shape) / 2**30
            show_info(f"SAM-HQ: '{C.LABELS_LAYER}' lives on disk at {path} ({gb:.1f} GB as a dense array)")
        else:
            data = np.zeros(shape, np.uint32)
        return self._add_labels_layer(image, data)

    def labels_volume(self, target: napari.layers.Labels) -> LayerLabels:
        """The bookkeeping (counter, extents, seeds) of a labels layer, bound once. A lazy
        (dask) layer is made writable first: into RAM when small, else into a zarr on disk."""
        with self._lock:
            bound = self._bindings.get(target.unique_id)
            if bound is not None and bound.array is target.data:
                return bound
        data = target.data
        if not isinstance(data, np.ndarray) and not type(data).__module__.startswith("zarr"):
            self._make_writable(target)
        bound = LayerLabels(target)
        with self._lock:
            self._bindings[target.unique_id] = bound
        return bound

    def _make_writable(self, target) -> None:
        from ..engine.labels import dense_nbytes, open_labels_zarr

        shape = tuple(int(s) for s in target.data.shape)
        if dense_nbytes(shape, target.data.dtype) <= self.disk_threshold_spin.value() * 2**30:
            target.data = np.asarray(target.data)
            show_info(f"SAM-HQ: '{target.name}' is read-only (lazy); it was loaded into RAM to be edited")
            return
        image = self.image_layer
        path = self.labels_path(image).with_name(f"{target.name}.labels.zarr")
        array = open_labels_zarr(path, shape, dtype=np.dtype(target.data.dtype) if target.data.dtype.kind == "u"
                                 else np.uint32)
        for i in range(shape[0]):  # slice by slice: never the whole volume in RAM
            array[i] = np.asarray(target.data[i])
        target.data = array
        show_info(f"SAM-HQ: '{target.name}' is read-only (lazy); it was copied to {path} to be edited")

    def commit(self) -> list[int]:
        """Write the previewed objects into the labels layer as new ids (or, with "Commit
        corrects the selected label", into that label); returns the ids. One undo step."""
        self._settle_decode()
        image = self.image_layer
        ann = self.annotator(image) if image is not None else None
        if ann is None or not ann.preview:
            show_info("SAM-HQ: nothing to commit: add prompts and wait for the preview")
            return []
        try:
            target = self._target_labels(image)
            ann.labels = self.labels_volume(target)
            if self.into_selected_check.isChecked():
                label = int(target.selected_label)
                keys = ann.correct(label, overwrite=self.overwrite_check.isChecked())
                ids = [label]
                message = f"Corrected label {label} on {len(keys)} slice(s). Propagate to follow it."
            else:
                ids = ann.commit(overwrite=self.overwrite_check.isChecked())
                message = f"Committed {len(ids)} object(s): ids {ids[:10]}"
        except (ValueError, OSError) as err:
            show_error(f"SAM-HQ: {err}")
            return []
        self.clear_prompts()
        self.status_label.setText(message)
        return ids

    def _settle_decode(self) -> None:
        """Let the decode in flight finish (one decoder pass): a commit then takes its final
        answer, not a first one cut at a tile edge that is being decoded again. With none in
        flight it returns at once: the Qt events waiting then (a redraw of the canvas, ~10 ms
        under Xvfb) are not the commit's to run."""
        if self._decode_worker is not None:
            process_events_until(lambda: self._decode_worker is None, poll=0.002)

    def _labels_layer(self):
        name = self.labels_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Labels) else None

    def undo(self) -> None:
        """Undo the last change of the labels layer (a commit, a propagation, a stroke)."""
        if (layer := self._labels_layer()) is not None:
            self.labels_volume(layer).undo()

    def redo(self) -> None:
        if (layer := self._labels_layer()) is not None:
            self.labels_volume(layer).redo()

    def clear_prompts(self) -> None:
        points, boxes = self._prompt_layers()
        layer = self.image_layer
        if layer is not None:
            self.annotator(layer).clear()
        if points is not None and len(points.data):
            with points.events.data.blocker():
                points.data = np.empty((0, points.ndim))
        if boxes is not None and len(boxes.data):
            with boxes.events.data.blocker():
                boxes.data = []
        self._draw_preview()


def _no_preview(ndim: int) -> np.ndarray:
    """The preview layer's data when it shows nothing: one pixel."""
    return np.zeros((1,) * ndim, np.uint16)

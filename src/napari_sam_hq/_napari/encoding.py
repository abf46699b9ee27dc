"""The dock's model and embeddings: the model (loaded, with download progress, in the encoding
worker), the embedding store, one ``Annotator`` per image layer, and the encoding worker that
takes tiles from the annotators' queues (the chosen image first; the tile under a prompt
before the rest of its plane; the slice on screen and its neighbours next).

All state is on this object, owned by one dock: two viewers, two docks, nothing shared but the
(read-only) model weights. Layers are never changed here; what the dock must do when the model
arrives or a tile a prompt waits for is ready, it hands in as callbacks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject

from . import constants as C
from .jobs import torch_job
from .layers import SliceKey, all_keys, current_key, image_data, orientation_of, spatial_shape
from .settings_panel import SettingsPanel
from .status import StatusLine

if TYPE_CHECKING:
    import napari

    from ..engine import EmbeddingStore
    from ..engine.annotation.annotator import Annotator
    from ..model import SamHQ


class Encoding(QObject):
    """Model, store and annotators of one dock. ``image()`` is the chosen image layer;
    ``on_model()`` runs when a model has loaded, ``on_waited()`` when a tile a prompt waits
    for is ready, ``on_turned()`` when an annotator turned to another plane. ``compute_button``
    is disabled while the encoding runs. A ``QObject`` child of the dock: when the dock is
    destroyed, Qt disconnects the worker from it (a worker still running reaches nothing)."""

    def __init__(self, viewer: napari.viewer.Viewer, *, settings: SettingsPanel, status: StatusLine,
                 image: Callable[[], Any], compute_button, cancel_button, on_model: Callable[[], None],
                 on_waited: Callable[[], None], on_turned: Callable[[], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.model: SamHQ | None = None
        self.model_key: tuple[str, str] | None = None
        self._settings, self._status, self._image = settings, status, image
        self._compute_button, self._cancel_button = compute_button, cancel_button
        self._on_model, self._on_waited, self._on_turned = on_model, on_waited, on_turned
        self._store: EmbeddingStore | None = None
        self._store_key: str | None = None
        # image layer.unique_id -> (what the annotator was built from, annotator). A plugin sees
        # layers through proxies, so id() is not stable; unique_id is.
        self._annotators: dict[Any, tuple[tuple, Annotator]] = {}
        self._lock = threading.RLock()
        self._worker = None
        self._said = ""  # the status the encoding set last: it replaces only its own

    # ------------------------------------------------------------------ model, store, annotators

    @property
    def ready(self) -> bool:
        """A model is loaded, and it is the one the settings ask for."""
        return self.model is not None and self._settings.model_request() == self.model_key

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def store(self) -> EmbeddingStore:
        """The embedding store the settings name (opened once per choice)."""
        from ..engine import EmbeddingStore, default_store_root

        text = self._settings.store_text()
        if self._store is None or self._store_key != text:
            if text.lower() == "none":
                self._store = EmbeddingStore(None, max_in_memory=C.STORE_RAM_ENTRIES)
            else:
                try:
                    self._store = EmbeddingStore(text or default_store_root(),
                                                 max_in_memory=C.STORE_RAM_ENTRIES_ON_DISK)
                except (ValueError, OSError) as err:
                    self._status.report_error(f"{err}. Embeddings are kept in RAM for now.", recoverable=True)
                    self._store = EmbeddingStore(None, max_in_memory=C.STORE_RAM_ENTRIES)
            self._store_key = text
        return self._store

    def annotator(self, layer: napari.layers.Image) -> Annotator:
        """The annotation state of ``layer``: its queue, preview, orientation, sessions and
        labels; rebuilt when the layer's data, the store or the tiles changed."""
        from ..engine.annotation.annotator import Annotator

        store = self.store()
        data = image_data(layer)
        tile, overlap = self._settings.tiles()
        spec = (id(data), layer.rgb, id(store), tile, overlap)
        with self._lock:
            hit = self._annotators.get(layer.unique_id)
            if hit is None or hit[0] != spec:
                ann = Annotator(data, rgb=layer.rgb, model=self.model, store=store, tile_size=tile,
                                overlap=overlap, max_ready=C.READY_TILES)
                hit = self._annotators[layer.unique_id] = (spec, ann)
            elif self.model is not None:
                hit[1].set_model(self.model)
            return hit[1]

    def oriented(self, layer) -> tuple[Annotator, SliceKey] | None:
        """The annotator of ``layer`` turned to the plane on screen, and the slice shown;
        ``None`` (after a warning) in 3D display."""
        orientation = orientation_of(self.viewer, layer)
        if orientation is None:
            show_warning("SAM-HQ segments the plane on screen: switch the viewer to 2D display")
            return None
        ann = self.annotator(layer)
        if ann.set_orientation(orientation.plane_axes):
            self._on_turned()
        return ann, current_key(self.viewer, layer, orientation)

    def set_model(self, request: tuple[str, str], model) -> None:
        """Every annotator uses ``model`` from now on (called from the worker once loaded)."""
        with self._lock:
            self.model_key, self.model = request, model
            for _, ann in self._annotators.values():
                ann.set_model(model)

    def forget(self, layer) -> None:
        """An image layer was removed: its encoding stops."""
        with self._lock:
            hit = self._annotators.pop(layer.unique_id, None)
        if hit is not None and hit[1].pending:
            hit[1].cancel_encoding()
            show_warning(f"SAM-HQ: image layer '{layer.name}' was removed; its embeddings are no longer computed")

    def reset(self) -> None:
        """Store or tile options changed: annotators are rebuilt on next use (stored embeddings
        stay valid: their keys do not depend on these options)."""
        with self._lock:
            self._annotators.clear()

    # ------------------------------------------------------------------ the plane on screen

    def view_centre(self, layer, ann) -> tuple[float, float] | None:
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

    def follow_view(self, layer, ann, here: SliceKey) -> None:
        """The slice on screen goes to the front of the queue (the tile at the centre of the
        view first), its neighbours after it (on a tiled plane only the tile in view: a
        4096 px plane has 25)."""
        lead = ann.lead_shape
        near = []
        for d in range(1, C.PREFETCH + 1):
            for axis in range(len(here)):
                for step in (-d, d):
                    k = list(here)
                    k[axis] += step
                    if 0 <= k[axis] < lead[axis]:
                        near.append(tuple(k))
        centre = self.view_centre(layer, ann)
        if ann.session.grid.tiled:  # neighbours of a tiled plane: the tile in the view only
            ann.request(near, tiles=ann.session.tiles_by_distance(centre)[:1], near=centre)
        else:
            ann.request(near, near=centre)
        ann.request([here], near=centre)  # the slice on screen before them, its tile in view first
        self.start()

    def compute(self, layer, keys: list[SliceKey] | None = None):
        """Encode ``keys`` (default: the current slice, then the rest, nearest first) of
        ``layer`` in the plane on screen; stored tiles are skipped. Returns the worker, or
        ``None`` when none could start."""
        found = self.oriented(layer)
        if found is None:
            return None
        ann, here = found
        if keys is None:
            keys = sorted(all_keys(spatial_shape(layer), ann.orientation),
                          key=lambda k: (sum(abs(a - b) for a, b in zip(k, here, strict=True)), k))
        ann.request(list(keys), near=self.view_centre(layer, ann))
        return self.start()

    # ------------------------------------------------------------------ the worker

    def start(self):
        """Start the encoding worker (loading the model first if needed) unless it runs."""
        if self._worker is not None:
            return self._worker
        request = self._settings.model_request()
        worker = self._job(request, self.model if request == self.model_key else None)
        worker.yielded.connect(self.on_yielded)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._compute_button.setEnabled(False)
        self._cancel_button.setEnabled(True)
        self._status.progress(0)
        self._say("Computing embeddings…")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the download and the encoding between two steps."""
        with self._lock:
            for _, ann in self._annotators.values():
                ann.cancel_encoding()
        if self._worker is not None:
            self._worker.quit()
            self._status.say("Cancelled.")
            self._status.progress(0)

    def _next(self):
        """The chosen image's annotator if it has work queued, else any other that has."""
        chosen = self._image()
        with self._lock:
            items = list(self._annotators.items())
        items.sort(key=lambda kv: chosen is None or kv[0] != chosen.unique_id)
        for uid, (_, ann) in items:
            if ann.pending:
                return uid, ann
        return None, None

    @torch_job
    def _job(self, request: tuple[str, str], model):
        if model is None:
            model = yield from self._load(request)
            if model is None:
                return
        while True:
            uid, ann = self._next()
            if ann is None:
                return
            ann.set_model(model)
            for step in ann.encode_next():
                yield ("progress", step.fraction, uid, step)

    def _load(self, request: tuple[str, str]):
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
        self.set_model(request, model)
        yield ("model", model)
        return model

    def on_yielded(self, message: tuple) -> None:
        """The worker's messages, on the GUI thread."""
        kind = message[0]
        if kind == "status":
            self._say(message[1])
        elif kind == "error":
            self._status.report_error(message[1])
        elif kind == "download":
            _, name, done, total = message
            if total:
                self._status.progress(done / total)
                self._say(f"Downloading {name}: {done / 2**20:.0f} of {total / 2**20:.0f} MB")
            else:
                self._say(f"Downloading {name}: {done / 2**20:.0f} MB")
        elif kind == "model":
            show_info(f"SAM-HQ: loaded {message[1].name} on {message[1].device}")
            self._on_model()
        elif kind == "progress":
            self._on_progress(*message[1:])

    def _on_progress(self, fraction: float, uid: Any, step) -> None:
        if step.held:  # waiting for a propagation (segment everything): its progress shows
            return
        self._status.progress(fraction)
        layer = self._image()
        if not step.done or layer is None or layer.unique_id != uid:
            return
        ann = self.annotator(layer)
        if step.orientation != ann.orientation:
            return
        waited = step.key in ann.waiting
        # the slice on screen, and only over the encoding's own message or for a prompt that
        # waits: a neighbour's prefetched tile, or the rest of this plane, would overwrite
        # what a preview or a tool just said ("Propagated ...")
        ours_said = self._status.text == self._said
        if step.key == current_key(self.viewer, layer, ann.orientation) and (ours_said or waited):
            where = f" (slice {step.key[0] if len(step.key) == 1 else step.key})" if step.key else ""
            self._say(f"Embedding ready{where}. Click to add points, draw boxes.")
        if waited:
            self._on_waited()

    def _on_error(self, err: Exception) -> None:
        self._status.report_error(str(err), err)

    def _say(self, text: str) -> None:
        self._said = text
        self._status.say(text)

    def _on_finished(self) -> None:
        self._worker = None
        self._compute_button.setEnabled(True)
        self._cancel_button.setEnabled(False)
        with self._lock:
            more = any(ann.pending for _, ann in self._annotators.values())
        if more and self.ready:
            self.start()  # queued after the worker looked for the last time

"""The SAM-HQ dock widget, composed of parts that each own one concern:

- ``SettingsPanel`` (``settings_panel.py``): model, device, image and labels layers, store, tiles
- ``Encoding`` (``encoding.py``): the model, the embedding store, one ``Annotator`` per image
  (``engine.annotation.annotator``: the Qt-free annotation state) and the encoding worker
- ``PromptsPanel`` (``preview.py``): prompt layers, the decode worker, the preview layer
- ``LabelsLayers`` (``labels_layers.py``): the labels layer objects go to, on disk when large
- ``StatusLine`` and ``Jobs`` (``status.py``, ``jobs.py``): progress, errors, the tools' workers
- the tools (``tools/``): one ``QGroupBox`` each, given a ``ToolHost`` (``host.py``)

This class builds and lays them out, binds the viewer's events and shortcuts, commits the
preview, and offers the public methods scripts and tests use (``commit``, ``wait``,
``propagate``, ...). Layers change only on the GUI thread, in the workers' handlers. All
state lives on the dock and its parts: two viewers, two docks, nothing shared but the
(read-only) model weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFrame,
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..engine.volumes import memory
from . import constants as C
from .encoding import Encoding
from .host import ToolHost
from .jobs import Jobs, process_events_until
from .labels_layers import LabelsLayers
from .layers import LayerLabels, SliceKey, spatial_shape
from .preview import PromptsPanel
from .settings_panel import SettingsPanel
from .status import StatusLine
from .tools.adapt import AdaptPanel
from .tools.everything import SegmentEverythingPanel
from .tools.measure import MeasurePanel
from .tools.propagate import PropagationPanel
from .tools.refine import RefinePanel
from .tools.track import TrackPanel

if TYPE_CHECKING:
    import napari

    from ..engine import EmbeddingStore, SegmentationSession
    from ..engine.annotation.annotator import Annotator
    from ..model import SamHQ


class SamHQWidget(QWidget):
    """Dock widget; its parts and controls are attributes so scripts and tests can drive it
    (``settings.model_combo``, ``prompts.negative_check``, ``propagation.propagate_button``, ...).
    The annotation state is in ``annotator(layer)``."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        memory.setup_heap()  # before the workers' threads first allocate (engine/volumes/memory.py)
        self.settings = SettingsPanel()
        self.status = StatusLine()
        self.status_label, self.progress_bar = self.status.label, self.status.bar
        self.compute_button = QPushButton("Compute embeddings")
        self.compute_button.setToolTip("Encode the current slice first, then the rest of the stack")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.encoding = Encoding(
            napari_viewer, settings=self.settings, status=self.status, image=lambda: self.image_layer,
            compute_button=self.compute_button, cancel_button=self.cancel_button,
            on_model=lambda: self.prompts.request(), on_waited=lambda: self.prompts.request(),
            on_turned=lambda: self.prompts.draw(), parent=self,
        )
        self.prompts = PromptsPanel(napari_viewer, encoding=self.encoding, status=self.status,
                                    image=lambda: self.image_layer)
        self.labels = LabelsLayers(napari_viewer, chosen=self.settings.labels_combo.currentText,
                                   choose=self.settings.labels_combo.setCurrentText,
                                   disk_gb=self.settings.disk_threshold_spin.value, root=self._labels_root)
        self.jobs = Jobs(self.status, self.cancel_button,
                         busy_elsewhere=lambda: self.encoding.busy or self.prompts.busy, parent=self)
        self.table = QTableWidget()  # the tools' per-object tables (measurements, refinement)
        self.table.setVisible(False)
        host = ToolHost(napari_viewer, image=lambda: self.image_layer, encoding=self.encoding, labels=self.labels,
                        jobs=self.jobs, status=self.status, show_table=self._show_table,
                        overwrite=lambda: self.overwrite_check.isChecked(), use_model=self._use_model,
                        rename_model=self._rename_model)
        self.propagation = PropagationPanel(host)
        self.everything = SegmentEverythingPanel(host)
        self.adaptation = AdaptPanel(host)
        self.refinement = RefinePanel(host)
        self.measurement = MeasurePanel(host)
        self.tracking = TrackPanel(host)
        self._build_ui()
        self._connect_viewer()
        self._refresh_layers()
        if self.image_layer is not None:
            self._on_image_changed()

    # ------------------------------------------------------------------ UI

    def _build_tools(self) -> list[QWidget]:
        return [self.propagation, self.everything, self.adaptation, self.refinement, self.tracking, self.measurement]

    def _build_ui(self) -> None:
        self.overwrite_check = QCheckBox("Overwrite existing labels")
        self.overwrite_check.setToolTip("Off: committed objects only fill pixels that are still 0")
        self.into_selected_check = QCheckBox("Commit corrects the selected label")
        self.into_selected_check.setToolTip(
            "Commit replaces the selected label on this slice instead of adding new objects; "
            "then Propagate again from the corrected slice"
        )
        self.commit_button = QPushButton(f"Commit ({C.KEY_COMMIT})")
        self.commit_button.setToolTip("Write the preview into the labels layer as new objects and clear the prompts")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last change of the labels layer (Ctrl+Z in the layer works too)")
        self.redo_button = QPushButton("Redo")
        self.clear_button = QPushButton(f"Clear prompts ({C.KEY_CLEAR})")
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
        layout.addWidget(self.settings)
        layout.addLayout(_row(self.compute_button, self.cancel_button))
        layout.addWidget(self.status)
        layout.addWidget(self.prompts)
        layout.addWidget(self.overwrite_check)
        layout.addWidget(self.into_selected_check)
        layout.addLayout(_row(self.commit_button, self.undo_button, self.redo_button))
        layout.addWidget(self.clear_button)
        for tool in self._build_tools():
            layout.addWidget(tool)
        layout.addWidget(self.table)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        s = self.settings
        self.compute_button.clicked.connect(lambda: self.compute_embeddings())
        self.cancel_button.clicked.connect(self.cancel)
        self.commit_button.clicked.connect(lambda: self.commit())
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.clear_button.clicked.connect(self.clear_prompts)
        s.store_edit.editingFinished.connect(self._on_options_changed)
        s.labels_dir_edit.editingFinished.connect(self._on_options_changed)
        s.tile_spin.valueChanged.connect(lambda _: self._on_options_changed())
        s.overlap_spin.valueChanged.connect(lambda _: self._on_options_changed())
        s.image_combo.currentIndexChanged.connect(lambda _: self._on_image_changed())

    def _connect_viewer(self) -> None:
        v = self.viewer
        v.layers.events.inserted.connect(self._refresh_layers)
        v.layers.events.removed.connect(self._on_layer_removed)
        v.dims.events.current_step.connect(self._on_slice_changed)
        v.dims.events.order.connect(self._on_orientation_changed)
        v.dims.events.ndisplay.connect(self._on_orientation_changed)
        v.bind_key(C.KEY_COMMIT, lambda _v: self.commit(), overwrite=True)
        v.bind_key(C.KEY_NEGATIVE, lambda _v: self.prompts.negative_check.toggle(), overwrite=True)
        v.bind_key(C.KEY_CLEAR, lambda _v: self.clear_prompts(), overwrite=True)

    def _show_table(self, table) -> None:
        self.table.clear()
        self.table.setRowCount(len(table))
        self.table.setColumnCount(len(table.columns))
        self.table.setHorizontalHeaderLabels([str(c) for c in table.columns])
        for r, row in enumerate(table.itertuples(index=False)):
            for c, value in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(f"{value:.4g}" if isinstance(value, float) else str(value)))
        self.table.setVisible(True)

    # ------------------------------------------------------------------ layers

    @property
    def image_layer(self) -> napari.layers.Image | None:
        name = self.settings.image_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Image) else None

    def _refresh_layers(self, event: Any = None) -> None:
        """Update the layer choices. Prompt layers are created only when an image is newly
        chosen through an insertion (never while layers are being removed, e.g. on close)."""
        image_combo, labels_combo = self.settings.image_combo, self.settings.labels_combo
        before = image_combo.currentText()
        images = [lay.name for lay in self.viewer.layers if isinstance(lay, Image)]
        labels = [lay.name for lay in self.viewer.layers if isinstance(lay, Labels) and lay.name != C.PREVIEW_LAYER]
        for combo, names, default in ((image_combo, images, None), (labels_combo, labels or [C.LABELS_LAYER],
                                                                    C.LABELS_LAYER)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names if default is None or default in names else [default, *names])
            if current in names or (default and current == default):
                combo.setCurrentText(current)
            combo.blockSignals(False)
        inserted = event is not None and getattr(event, "type", "") == "inserted"
        if inserted and image_combo.currentText() != before and self.image_layer is not None:
            self._on_image_changed()

    def _on_layer_removed(self, event: Any) -> None:
        removed = event.value
        self.encoding.forget(removed)
        self.labels.forget(removed.unique_id)
        self._refresh_layers()

    def _on_image_changed(self) -> None:
        layer = self.image_layer
        if layer is None:
            return
        self.prompts.ensure_layers(layer)
        self.labels.offer_saved(layer)
        shape = spatial_shape(layer)
        if not layer.rgb and len(shape) >= 3 and shape[0] <= 4:
            show_info(
                f"SAM-HQ: '{layer.name}' has {shape[0]} planes along its first axis. If these are "
                "channels, not slices, open them as separate layers (channel_axis) and pick one, or "
                "make an RGB layer; SAM-HQ treats the first axis as slices."
            )

    def _on_slice_changed(self, _event: Any = None) -> None:
        """The slice on screen goes to the front of the encoding queue; its preview is drawn."""
        layer = self.image_layer
        found = self.encoding.oriented(layer) if layer is not None else None
        if found is None:
            return
        self.prompts.draw()
        if self.model is not None:
            self.encoding.follow_view(layer, *found)

    def _on_orientation_changed(self, _event: Any = None) -> None:
        """Transpose, Roll or 2D/3D: segment the new plane (embeddings per orientation stay stored)."""
        from .layers import orientation_of

        layer = self.image_layer
        if layer is None or orientation_of(self.viewer, layer) is None:
            return
        self._on_slice_changed()
        self.prompts.request()

    def _on_options_changed(self) -> None:
        """Store or tile options changed: annotators are rebuilt on next use; labels saved in
        the (new) folder are offered."""
        self.encoding.reset()
        if self.image_layer is not None:
            self.labels.offer_saved(self.image_layer)

    def _labels_root(self) -> Path:
        from ..engine import default_store_root

        chosen = self.settings.labels_dir()
        if chosen is not None:
            return chosen
        store = self.store()
        return Path(store.root).parent if store.root is not None else Path(default_store_root()).parent

    # ------------------------------------------------------------------ model, store, annotators

    @property
    def model(self) -> SamHQ | None:
        return self.encoding.model

    def store(self) -> EmbeddingStore:
        """The embedding store the settings name (opened once per choice)."""
        return self.encoding.store()

    def annotator(self, layer: napari.layers.Image | None = None) -> Annotator:
        """The annotation state of ``layer`` (default: the chosen image): its queue, preview,
        orientation, sessions and labels. Scripts may drive it directly."""
        layer = layer or self.image_layer
        if layer is None:
            raise RuntimeError("pick an image layer first")
        return self.encoding.annotator(layer)

    def session(self, layer: napari.layers.Image | None = None) -> SegmentationSession:
        """The engine session of ``layer`` (default: the chosen image) for the plane on screen."""
        layer = layer or self.image_layer
        found = self.encoding.oriented(layer) if layer is not None else None
        if found is None or self.model is None:
            raise RuntimeError("pick an image and compute embeddings first (the model loads then)")
        return found[0].session

    def _use_model(self, model, hq_token_only: bool) -> None:
        self.encoding.set_model(self.settings.model_request(), model)
        if hq_token_only:
            self.prompts.hq_only_check.setChecked(True)
        self.prompts.request()

    def _rename_model(self, path: str) -> None:
        self.settings.model_combo.setCurrentText(path)
        self.encoding.set_model(self.settings.model_request(), self.model)

    def compute_embeddings(self, keys: list[SliceKey] | None = None):
        """Encode ``keys`` (default: the current slice, then the rest, nearest first) of the
        chosen image, in the plane on screen, in the background; stored tiles are skipped.
        While a job runs, ``keys`` go to the front of its queue. Returns the worker (or
        ``None`` when none could start)."""
        layer = self.image_layer
        if layer is None:
            from napari.utils.notifications import show_warning

            show_warning("SAM-HQ: open an image layer first (and pick it in the Image box)")
            return None
        return self.encoding.compute(layer, keys)

    # ------------------------------------------------------------------ background work

    def cancel(self) -> None:
        """Stop the download, the encoding, propagation, segment everything, adaptation,
        refinement and a measurement between two steps (a stopped adaptation keeps nothing, a
        stopped refinement writes nothing, a stopped measurement shows nothing)."""
        self.jobs.cancel()
        self.encoding.cancel()

    @property
    def busy(self) -> bool:
        """Whether background work runs: model load and embeddings, a decode, or a tool."""
        return self.encoding.busy or self.prompts.busy or self.jobs.busy

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
        errors = self.status.take_errors()
        if errors:
            raise errors[0]

    def request_preview(self) -> None:
        """Decode the current prompts (coalesced); before a model is loaded, load it first."""
        self.prompts.request()

    # ------------------------------------------------------------------ the tools, for scripts

    def propagate(self):
        """``propagation.propagate()``: the objects of this slice through the stack."""
        return self.propagation.propagate()

    def segment_everything(self):
        """``everything.segment_everything()``: every object of this slice (or the stack)."""
        return self.everything.segment_everything()

    def auto_settings(self):
        return self.everything.auto_settings()

    def adapt(self):
        """``adaptation.adapt()``: train the decoder on the objects of the labels layer."""
        return self.adaptation.adapt()

    def use_adapted(self):
        return self.adaptation.use_adapted()

    def save_adapted(self, path: str | Path) -> tuple[Path, Path]:
        return self.adaptation.save_adapted(path)

    def refine(self):
        """``refinement.refine()``: re-segment every object of the labels layer."""
        return self.refinement.refine()

    def measure(self):
        """``measurement.measure()``: the table of the labels layer (waits for it)."""
        return self.measurement.measure()

    def start_measure(self):
        return self.measurement.start_measure()

    def export_measurements(self, path: str) -> None:
        self.measurement.export_measurements(path)

    # ------------------------------------------------------------------ labels

    def labels_path(self, layer: napari.layers.Image | None = None) -> Path:
        """Where '<image>.labels.zarr' of ``layer`` is kept when its labels live on disk."""
        return self.labels.path(layer or self.image_layer)

    def labels_volume(self, target: napari.layers.Labels) -> LayerLabels:
        """The bookkeeping (counter, extents, seeds) of a labels layer, bound once."""
        return self.labels.volume(target, self.image_layer)

    def commit(self) -> list[int]:
        """Write the previewed objects into the labels layer as new ids (or, with "Commit
        corrects the selected label", into that label); returns the ids. One undo step."""
        self.prompts.settle()
        image = self.image_layer
        ann = self.annotator(image) if image is not None else None
        if ann is None or not ann.preview:
            show_info("SAM-HQ: nothing to commit: add prompts and wait for the preview")
            return []
        try:
            target = self.labels.target(image)
            ann.labels = self.labels.volume(target, image)
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
        self.status.say(message)
        return ids

    def undo(self) -> None:
        """Undo the last change of the labels layer (a commit, a propagation, a stroke)."""
        if (layer := self.labels.chosen_layer()) is not None:
            self.labels_volume(layer).undo()

    def redo(self) -> None:
        if (layer := self.labels.chosen_layer()) is not None:
            self.labels_volume(layer).redo()

    def clear_prompts(self) -> None:
        self.prompts.clear()


def _row(first: QWidget, *rest: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(first, 1)
    for w in rest:
        row.addWidget(w)
    return row

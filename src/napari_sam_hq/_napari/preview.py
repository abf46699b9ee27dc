"""The prompt workflow up to the preview: the points, boxes and preview layers of the chosen
image, the decode of their prompts in a worker (coalesced: only the latest prompts are
decoded), and the preview layer, which holds only the objects' box on the plane on screen, so
a prompt costs the same on a 2D image and on a stack of any size. Layers change only on the
GUI thread, in the worker's handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from . import constants as C
from .encoding import Encoding
from .jobs import process_events_until, torch_job
from .layers import collect_prompts, current_key, orientation_of, spatial_shape
from .status import StatusLine

if TYPE_CHECKING:
    import napari

    from ..engine.annotation.annotator import Annotator


class PromptsPanel(QWidget):
    """The prompt options (``negative_check``, ``multimask_check``, ``hq_only_check``) and the
    preview of the chosen image (``image()``), decoded with ``encoding``'s annotators."""

    def __init__(self, viewer: napari.viewer.Viewer, *, encoding: Encoding, status: StatusLine,
                 image: Callable[[], Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._encoding, self._status, self._image = encoding, status, image
        self._worker = None
        self._dirty = False
        self.negative_check = QCheckBox(f"Negative points ({C.KEY_NEGATIVE})")
        self.negative_check.setToolTip("New points mark background (magenta) instead of the object (green)")
        self.multimask_check = QCheckBox("Multimask (best of three)")
        self.hq_only_check = QCheckBox("HQ token only")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in (self.negative_check, self.multimask_check, self.hq_only_check):
            layout.addWidget(w)
        self.negative_check.toggled.connect(self._on_negative_toggled)
        self.multimask_check.toggled.connect(lambda _: self.request())
        self.hq_only_check.toggled.connect(lambda _: self.request())

    @property
    def busy(self) -> bool:
        return self._worker is not None

    # ------------------------------------------------------------------ prompt layers

    def ensure_layers(self, image: napari.layers.Image) -> None:
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
            preview = self.viewer.add_labels(no_preview(ndim), name=C.PREVIEW_LAYER, opacity=0.5, **frame)
            preview.visible = False
        self.viewer.layers.selection.active = self.viewer.layers[C.POINTS_LAYER]

    def layers(self):
        """The points and boxes layers (``None`` where missing)."""
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
            self.request()

    def _on_points_changed(self, event: Any = None) -> None:
        if not self._change_done(event):
            return
        points, _ = self.layers()
        if points is not None and len(points.data):
            labels = points.features["label"].astype(str).to_numpy()
            colors = [C.NEGATIVE_COLOR if lab == C.NEGATIVE else C.POSITIVE_COLOR for lab in labels]
            with points.events.data.blocker():
                points.face_color = colors
        self.request()

    def _on_negative_toggled(self, negative: bool) -> None:
        points, _ = self.layers()
        if points is not None:
            points.feature_defaults["label"] = C.NEGATIVE if negative else C.POSITIVE

    def clear(self) -> None:
        """Remove every prompt of the chosen image and its preview."""
        points, boxes = self.layers()
        layer = self._image()
        if layer is not None:
            self._encoding.annotator(layer).clear()
        if points is not None and len(points.data):
            with points.events.data.blocker():
                points.data = np.empty((0, points.ndim))
        if boxes is not None and len(boxes.data):
            with boxes.events.data.blocker():
                boxes.data = []
        self.draw()

    # ------------------------------------------------------------------ decode

    def request(self) -> None:
        """Decode the current prompts (coalesced: at most one decode runs at a time). Before a
        model is loaded, a prompt starts loading it and encoding the tile under it."""
        if self._worker is not None:
            self._dirty = True
            return
        layer = self._image()
        found = self._encoding.oriented(layer) if layer is not None else None
        if found is None:
            return
        ann, _ = found
        prompts, warnings = collect_prompts(*self.layers(), ann.orientation, ann.plane_shape)
        for w in warnings:
            show_warning(f"SAM-HQ: {w}")
        prompts = {k: p for k, p in prompts.items() if p.objects()}
        if not self._encoding.ready:
            if prompts:  # load the model, encode the tiles under the prompts; decode after
                for key, p in prompts.items():
                    xy = (p.points or [((p.boxes[0][0] + p.boxes[0][2]) / 2, (p.boxes[0][1] + p.boxes[0][3]) / 2)])[0]
                    ann.request([key], near=xy)
                self._encoding.start()
            return
        worker = self._job(ann, prompts, self.multimask_check.isChecked(), self.hq_only_check.isChecked())
        worker.yielded.connect(self._on_first_answers)
        worker.returned.connect(self._on_decoded)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._dirty = False
        worker.start()

    def settle(self) -> None:
        """Let the decode in flight finish (one decoder pass): a commit then takes its final
        answer, not a first one cut at a tile edge that is being decoded again. With none in
        flight it returns at once: the Qt events waiting then (a redraw of the canvas, ~10 ms
        under Xvfb) are not the commit's to run."""
        if self._worker is not None:
            process_events_until(lambda: self._worker is None, poll=0.002)

    @torch_job
    def _job(self, ann: Annotator, prompts, multimask: bool, hq_only: bool):
        # a mask cut at a tile edge is shown (yielded) while the tile that holds it decodes it again
        return (yield from ann.iter_decode(prompts, multimask_output=multimask, hq_token_only=hq_only))

    def _on_first_answers(self, _preview) -> None:
        self.draw()
        self._status.say("Preview: refining a mask cut at a tile edge…")

    def _on_decoded(self, result: tuple) -> None:
        preview, errors = result
        for key, message in errors.items():
            self._status.report_error(f"slice {key}: {message}" if key else message)
        layer = self._image()
        waiting = layer is not None and bool(self._encoding.annotator(layer).waiting)
        if waiting:
            self._encoding.start()
        self.draw()
        scores = [o.score for objects in preview.values() for o in objects]
        if scores:
            note = " (refining as tiles arrive)" if waiting else ""
            self._status.say(
                f"Preview: {len(scores)} object(s), predicted IoU "
                + ", ".join(f"{s:.2f}" for s in scores[:8])
                + (" …" if len(scores) > 8 else "") + note
            )

    def _on_error(self, err: Exception) -> None:
        self._status.report_error(str(err), err)

    def _on_finished(self) -> None:
        self._worker = None
        if self._dirty:
            self.request()

    def draw(self) -> None:
        """The preview of the slice on screen into the preview layer: only its objects' box on
        that plane (size 1 on the slicing axes, placed by translate), nothing else."""
        layers = self.viewer.layers
        layer = self._image()
        if C.PREVIEW_LAYER not in layers or layer is None:
            return
        preview = layers[C.PREVIEW_LAYER]
        orientation = orientation_of(self.viewer, layer)
        if orientation is None:
            return
        ann = self._encoding.annotator(layer)
        ndim = len(spatial_shape(layer))
        here = current_key(self.viewer, layer, orientation)
        crop = ann.preview_crop(here) if ann.orientation == orientation else None
        if crop is None:
            if preview.data.size > 1:  # let go of the pixels and napari's textures of them: a
                # whole-plane preview at 4096 x 4096 kept 32 MB (and its textures) after its
                # commit. Before hiding: a hidden layer is not sliced again, and its old slice
                # would keep the pixels
                preview.data = no_preview(ndim)
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


def no_preview(ndim: int) -> np.ndarray:
    """The preview layer's data when it shows nothing: one pixel."""
    return np.zeros((1,) * ndim, np.uint16)

"""**Stacks**: propagate the objects of the slice on screen through the stack, both ways, until
they end; correct a slice and propagate again (the annotator keeps the seeds); fill the
selected label between the annotated slices around the one on screen; the prompt kind each
slice gets; stop slices (a negative point on another slice, on an object, ends it there)."""

from __future__ import annotations

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QPushButton

from ...engine.volumes.propagation import PROMPT_KINDS, PropagationSettings
from .. import constants as C
from ..forms import settings_form
from ..host import ToolHost
from ..jobs import torch_job
from ..layers import collect_prompts, spatial_shape

UNIT = dict(min=0.0, max=1.0, step=0.05)
JOB = "propagate"


class PropagationPanel(QGroupBox):
    def __init__(self, host: ToolHost) -> None:
        super().__init__("Stacks")
        self.host = host
        self.propagate_button = QPushButton("Propagate all")
        self.propagate_button.setToolTip(
            "Segment every object of this slice (or the selected label) on the neighbouring slices, both ways, "
            "until they end; one undo step. A negative point on another slice, on an object, stops it there"
        )
        self.fill_button = QPushButton("Fill between")
        self.fill_button.setToolTip(
            "The selected label on the slices between its annotated slices around this one: from both ends "
            "towards the middle, the middle slice prompted from both neighbours"
        )
        self.selected_only_check = QCheckBox("Only the selected label")
        self.propagation_form = settings_form(
            PropagationSettings,
            {
                "score_threshold": dict(UNIT, tooltip="Stop where the predicted IoU falls below this"),
                "iou_threshold": dict(UNIT, tooltip="Stop where the overlap (IoU) with the previous slice falls below"),
                "min_area": dict(min=1, max=10**7, tooltip="Stop where the object has fewer pixels than this"),
                "max_slices": dict(value=0, annotation=int, min=0, max=100000,
                                   tooltip="At most this many slices each way (0: to the end of the stack)"),
                "prompt": dict(widget_type="ComboBox", choices=list(PROMPT_KINDS),
                               tooltip="How each slice is prompted from the last: point (the default: held best "
                                       "in micro-sam's measurement), points, box, mask and their combinations"),
            },
            labels={"score_threshold": "Stop below score", "iou_threshold": "Stop below IoU",
                    "min_area": "Min area (px)", "max_slices": "Max slices each way", "prompt": "Prompt"},
        )
        form = QFormLayout(self)
        form.addRow(self.propagation_form.native)
        form.addRow(self.selected_only_check)
        form.addRow(self.propagate_button)
        form.addRow(self.fill_button)
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.fill_button.clicked.connect(lambda: self.fill_between())

    def _settings(self):
        return self.host.settings(PropagationSettings, self.propagation_form,
                                  max_slices=self.propagation_form.max_slices.value or None)

    def stop_points(self, ann, here) -> dict[int, list[tuple[float, float]]]:
        """Negative points on other slices of the stack through ``here`` (along the last
        slicing axis): ``{slice: [(x, y)]}`` where objects end."""
        layers = self.host.viewer.layers
        if C.POINTS_LAYER not in layers:
            return {}
        by_slice, _ = collect_prompts(layers[C.POINTS_LAYER], None, ann.orientation, ann.plane_shape)
        stops: dict[int, list[tuple[float, float]]] = {}
        for key, p in by_slice.items():
            if key == tuple(here) or tuple(key)[:-1] != tuple(here)[:-1]:
                continue
            stops[key[-1]] = [xy for xy, lab in zip(p.points, p.labels, strict=True) if lab == 0]
        return {z: pts for z, pts in stops.items() if pts}

    def _start(self, what: str, missing: str):
        """``(annotator, slice, labels layer, settings)`` for a propagation on a stack, or
        ``None`` after telling the user why not."""
        host = self.host
        image = host.image_layer
        if image is not None and len(spatial_shape(image)) < 3:
            show_info(f"SAM-HQ: {what} needs a stack (Z or T slices); this image is 2D")
            return None
        found = host.target(JOB, "a propagation", missing)
        settings = self._settings() if found is not None else None
        return None if settings is None else (*found, settings)

    def fill_between(self):
        """Fill the selected label between its nearest annotated slices around the slice on
        screen (from both ends towards the middle; one undo step). Returns the worker, or ``None``."""
        found = self._start("filling between slices", "compute embeddings and commit an object on two slices first")
        if found is None:
            return None
        ann, here, target, settings = found
        host = self.host
        label = int(target.selected_label)
        try:
            seeds, span = ann.fill_seeds(here, label)
        except ValueError as err:
            show_info(f"SAM-HQ: {err}")
            return None
        stops = self.stop_points(ann, here)
        return host.jobs.run(JOB, _propagate_job(ann, here, seeds, settings, False, stops),
                             button=self.fill_button,
                             returned=lambda result: self._on_propagated(ann, target, here, result, seeds, span),
                             message=f"Filling label {label} between slices {span[0]} and {span[1]}…")

    def propagate(self):
        """Propagate the objects of the current slice (or the selected label) through the
        stack along the last slicing axis of the plane on screen. Returns the worker, or ``None``."""
        found = self._start("propagation", "compute embeddings and commit an object first")
        if found is None:
            return None
        ann, here, target, settings = found
        host = self.host
        ids = [int(target.selected_label)] if self.selected_only_check.isChecked() else ann.labels_on(here)
        if not ids or ids == [0]:
            show_info("SAM-HQ: no object on this slice to propagate: commit one first (or pick its label)")
            return None
        seeds = ann.propagation_seeds(here, ids)
        if not seeds:
            show_info(f"SAM-HQ: label(s) {ids} have no pixels in this stack")
            return None
        stops = self.stop_points(ann, here)
        return host.jobs.run(JOB, _propagate_job(ann, here, seeds, settings, True, stops), button=self.propagate_button,
                             returned=lambda result: self._on_propagated(ann, target, here, result, seeds),
                             message=f"Propagating {len(seeds)} object(s)…")

    def _on_propagated(self, ann, target, here, found, seeds, within=None) -> None:
        host = self.host
        if target not in host.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed during propagation; nothing written")
            return
        ann.labels = host.labels_volume(target)
        ann.apply_propagation(here, found, seeds, overwrite=host.overwrite, within=within)
        reach = sorted(found)
        span = f"slices {reach[0]}-{reach[-1]}" if reach else "no new slice"
        host.status.say(f"Propagated {len(seeds)} object(s): {span} ({len(found)} slices).")
        host.status.progress(1.0)


@torch_job
def _propagate_job(ann, here, seeds, settings, outward, stops):
    return (yield from ann.iter_propagate(here, seeds, settings, outward=outward, stops=stops))

"""**Segment everything**: every object of the slice on screen (or the whole stack, linked in
3D) as new labels."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QPushButton

from ...engine.automatic.settings import AutoSettings
from ..forms import read_settings, settings_form
from ..host import ToolHost
from ..jobs import torch_job
from ..layers import SliceKey

UNIT = dict(min=0.0, max=1.0, step=0.01)
JOB = "auto"


class SegmentEverythingPanel(QGroupBox):
    def __init__(self, host: ToolHost) -> None:
        super().__init__("Segment everything")
        self.host = host
        self.auto_button = QPushButton("Segment everything")
        self.auto_button.setToolTip("Prompt a grid of points and add every object found as a new label")
        self.auto_stack_check = QCheckBox("Whole stack (linked in 3D)")
        self.auto_form = settings_form(
            AutoSettings,
            {
                "points_per_side": dict(min=4, max=128),
                "pred_iou_thresh": UNIT,
                "stability_score_thresh": UNIT,
                "min_mask_region_area": dict(min=0, max=100000,
                                             tooltip="Holes and islands smaller than this (pixels) are removed"),
                "max_mask_fraction": dict(min=0.01, max=1.0, step=0.05,
                                          tooltip="Masks covering more of the image than this (the background) "
                                                  "are dropped"),
            },
            labels={"points_per_side": "Points per side", "pred_iou_thresh": "Min predicted IoU",
                    "stability_score_thresh": "Min stability", "min_mask_region_area": "Min area (px)",
                    "max_mask_fraction": "Max area (fraction)"},
        )
        form = QFormLayout(self)
        form.addRow(self.auto_form.native)
        form.addRow(self.auto_stack_check)
        form.addRow(self.auto_button)
        self.auto_button.clicked.connect(lambda: self.segment_everything())

    def auto_settings(self) -> AutoSettings:
        """The form's settings (``ValueError`` names a bad value)."""
        return read_settings(AutoSettings, self.auto_form)

    def segment_everything(self):
        """Automatic segmentation of the current slice (or the whole stack, linked along its
        first slicing axis) into new labels. Returns the worker, or ``None``."""
        host = self.host
        found = host.target(JOB, "segment everything", "pick an image and compute embeddings first (the model "
                            "loads then)")
        if found is None:
            return None
        ann, here, target = found
        settings = host.settings(AutoSettings, self.auto_form)
        if settings is None:
            return None
        whole = self.auto_stack_check.isChecked() and len(here) == 1
        if self.auto_stack_check.isChecked() and len(here) > 1:
            show_info("SAM-HQ: whole-stack linking works along one slicing axis; segmenting this slice only")
        keys = None if whole else [here]
        return host.jobs.run(JOB, _auto_job(ann, keys, settings), button=self.auto_button,
                             returned=lambda labels: self._on_done(ann, target, None if whole else here, labels),
                             message="Segmenting everything…")

    def _on_done(self, ann, target, key: SliceKey | None, labels: np.ndarray) -> None:
        host = self.host
        if target not in host.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed; nothing written")
            return
        ann.labels = host.labels_volume(target)
        new = ann.add_objects(key, labels, overwrite=host.overwrite)
        host.status.say(f"Segment everything: {len(new)} new object(s). Correct with prompts; Ctrl+Z undoes it.")
        host.status.progress(1.0)


@torch_job
def _auto_job(ann, keys, settings):
    from ...engine.automatic.modes import iter_segment_everything

    return (yield from ann.in_front(iter_segment_everything(ann.session, keys, settings)))

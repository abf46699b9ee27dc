"""**Segment everything**: every object of the slice on screen (or the whole stack, linked in
3D) as new labels, in one of three modes: ``ais`` (the instance head alone), ``apg`` (the
head's objects as SAM-HQ prompts) or ``amg`` (the point grid, coarse to fine). The head comes
from Adapt ("Use") or a file ("Load head…")."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QPushButton

from ...engine.automatic.settings import AutoSettings
from ..forms import read_settings, settings_form
from ..host import ToolHost
from ..jobs import torch_job
from ..layers import SliceKey

UNIT = dict(min=0.0, max=1.0, step=0.01)
JOB = "auto"
MODES = {"ais": "ais: instance head (fastest)", "apg": "apg: head + SAM-HQ prompts", "amg": "amg: point grid"}


class SegmentEverythingPanel(QGroupBox):
    def __init__(self, host: ToolHost) -> None:
        super().__init__("Segment everything")
        self.host = host
        self.auto_button = QPushButton("Segment everything")
        self.auto_button.setToolTip("Prompt a grid of points and add every object found as a new label")
        self.auto_stack_check = QCheckBox("Whole stack (linked in 3D)")
        self.mode_combo = QComboBox()
        for mode, text in MODES.items():
            self.mode_combo.addItem(text, mode)
        self.mode_combo.setCurrentIndex(2)  # amg until a head is in use
        self.mode_combo.setToolTip("ais and apg need an instance head: train one in Adapt, or load one")
        self.head_label = QLabel("No instance head")
        self.head_label.setWordWrap(True)
        self.load_head_button = QPushButton("Load head…")
        self.load_head_button.setToolTip("An instance head file (napari-sam-hq train --head instances, or Adapt)")
        host.on_head(self._on_head)
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
                "coarse_to_fine": dict(tooltip="amg: a sparse grid first, then only the points no mask covers "
                                               "(off: every point, the official method)"),
            },
            labels={"points_per_side": "Points per side", "pred_iou_thresh": "Min predicted IoU",
                    "stability_score_thresh": "Min stability", "min_mask_region_area": "Min area (px)",
                    "max_mask_fraction": "Max area (fraction)", "coarse_to_fine": "Coarse to fine"},
        )
        form = QFormLayout(self)
        form.addRow("Mode", self.mode_combo)
        form.addRow(self.head_label)
        form.addRow(self.load_head_button)
        form.addRow(self.auto_form.native)
        form.addRow(self.auto_stack_check)
        form.addRow(self.auto_button)
        self.auto_button.clicked.connect(lambda: self.segment_everything())
        self.load_head_button.clicked.connect(self._load_dialog)

    @property
    def mode(self) -> str:
        return self.mode_combo.currentData()

    def set_mode(self, mode: str) -> None:
        self.mode_combo.setCurrentIndex(list(MODES).index(mode))

    def load_head(self, path: str):
        """Use the instance head in ``path`` (checked against the model in use when one is
        loaded). Returns the head, or ``None`` after a message."""
        from ...engine.automatic.instances import HeadError, load_head

        try:
            head, card = load_head(path, model=self.host.model)
        except HeadError as err:
            show_error(f"SAM-HQ: {err}")
            return None
        ap = card.held_out.get("ap50_after")
        self.host.set_head(head, f"{path}" + (f" (held-out AP50 {ap:.2f})" if ap is not None else ""))
        return head

    def _on_head(self, head, description: str) -> None:
        self.head_label.setText(f"Head: {description}" if head is not None else "No instance head")
        if head is not None and self.mode == "amg":
            self.set_mode("ais")

    def _load_dialog(self) -> None:  # pragma: no cover - a modal dialog
        path, _ = QFileDialog.getOpenFileName(self, "Instance head", "", "Instance heads (*.pth)")
        if path:
            self.load_head(path)

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
        mode, head = self.mode, host.head
        if mode in ("ais", "apg") and head is None:
            show_info(f"SAM-HQ: mode {mode} needs an instance head: train one in 'Adapt to your images' "
                      "(Train: instance head), load one, or choose amg")
            return None
        whole = self.auto_stack_check.isChecked() and len(here) == 1
        if self.auto_stack_check.isChecked() and len(here) > 1:
            show_info("SAM-HQ: whole-stack linking works along one slicing axis; segmenting this slice only")
        keys = None if whole else [here]
        return host.jobs.run(JOB, _auto_job(ann, keys, settings, mode, head), button=self.auto_button,
                             returned=lambda labels: self._on_done(ann, target, None if whole else here, labels),
                             message=f"Segmenting everything ({mode})…")

    def _on_done(self, ann, target, key: SliceKey | None, labels: np.ndarray) -> None:
        host = self.host
        if target not in host.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed; nothing written")
            return
        ann.labels = host.labels_volume(target)
        if key is not None and key != () and labels.ndim == 3:  # one slice of a stack: 1 x H x W
            labels = labels[0]
        new = ann.add_objects(key, labels, overwrite=host.overwrite)
        host.status.say(f"Segment everything: {len(new)} new object(s). Correct with prompts; Ctrl+Z undoes it.")
        host.status.progress(1.0)


@torch_job
def _auto_job(ann, keys, settings, mode, head):
    from ...engine.automatic.modes import iter_segment_everything

    return (yield from ann.in_front(iter_segment_everything(ann.session, keys, settings, mode=mode, head=head)))

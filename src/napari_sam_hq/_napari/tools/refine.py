"""**Refine labels**: re-segment every object of a labels layer with SAM-HQ, prompted by itself
(ids kept); the result in a new layer or the old one replaced as one undo step, and a table
of how much each object changed."""

from __future__ import annotations

from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QPushButton

from ...engine.adaptation.refine import REFINED, RefineSettings
from ..forms import settings_form
from ..host import ToolHost
from ..jobs import torch_job
from .adapt import NO_MODEL

JOB = "refine"


class RefinePanel(QGroupBox):
    def __init__(self, host: ToolHost) -> None:
        super().__init__("Refine labels")
        self.host = host
        self.refine_changes = None  # the last per-object table (pandas)
        self.refine_replace_check = QCheckBox("Replace the labels (one undo step)")
        self.refine_replace_check.setToolTip("Off: the result goes to a new layer '<labels> refined'")
        self.refine_slice_check = QCheckBox("This slice only")
        self.refine_form = settings_form(
            RefineSettings,
            {
                "min_iou": dict(min=0.0, max=1.0, step=0.05,
                                tooltip="Keep the old mask when the new one overlaps it less than this"),
                "use_point": dict(tooltip="Prompt with the object's innermost point as well as its box"),
                "use_mask": dict(tooltip="Prompt with the object's own mask"),
            },
            labels={"min_iou": "Keep old below IoU", "use_point": "Inner point", "use_mask": "Own mask"},
        )
        self.refine_button = QPushButton("Refine labels")
        self.refine_button.setToolTip("Segment every object of the labels layer again, prompted by itself; ids kept")
        form = QFormLayout(self)
        form.addRow(self.refine_form.native)
        form.addRow(self.refine_slice_check)
        form.addRow(self.refine_replace_check)
        form.addRow(self.refine_button)
        self.refine_button.clicked.connect(lambda: self.refine())

    def refine(self):
        """Refine the chosen labels layer of the chosen image (the slice on screen, or every
        slice) in the plane on screen. Returns the worker, or ``None``."""
        host = self.host
        found = host.ready(JOB, "refinement", NO_MODEL)
        if found is None:
            return None
        ann, here = found
        image = host.image_layer
        [source] = host.labels.of_image(image) or [None]
        if source is None:
            show_info("SAM-HQ: pick the labels layer to refine in the Labels box (it must fit the image)")
            return None
        settings = host.settings(RefineSettings, self.refine_form)
        if settings is None:
            return None
        keys = [here] if self.refine_slice_check.isChecked() else None
        return host.jobs.run(JOB, _refine_job(ann, source.data, keys, settings), button=self.refine_button,
                             returned=lambda result: self._on_refined(ann, image, source, result),
                             message=f"Refining '{source.name}'…")

    def _on_refined(self, ann, image: Image, source: Labels, result) -> None:
        host = self.host
        if source not in host.viewer.layers:
            show_warning("SAM-HQ: the labels layer was removed during refinement; nothing written")
            return
        if self.refine_replace_check.isChecked():
            target = source
        else:
            target = host.viewer.add_labels(host.labels.writable_copy(image, source), name=f"{source.name} refined",
                                            scale=source.scale, translate=source.translate)
        ann.apply_refine(result, host.labels_volume(target))
        table = result.table()
        self.refine_changes = table
        host.show_table(table)
        refined = sum(c.status == REFINED for c in result.changes)
        where = "replaced (Undo restores them)" if target is source else f"in '{target.name}'"
        host.status.say(f"Refined {refined} of {len(result.changes)} object(s), {where}; "
                        "the table says how much each changed.")
        host.status.progress(1.0)


@torch_job
def _refine_job(ann, data, keys, settings):
    return (yield from ann.iter_refine(data, keys, settings))

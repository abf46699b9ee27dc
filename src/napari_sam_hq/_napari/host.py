"""``ToolHost``: everything a tool panel may use of the dock, and nothing else. The dock builds
one and hands it to each tool; a tool never reads the dock's (or another tool's) attributes.

What it offers: the viewer and the chosen image; the annotator turned to the plane on screen
(``ready``) and the labels layer a tool writes to (``target``); labels layers and their
bookkeeping; the model in use (and switching to another); the instance head in use (one tool
trains it, another uses it: ``set_head`` / ``on_head``); the jobs runner; the status line; the
shared results table; the prompt options a tool must honour (``overwrite``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info

from .encoding import Encoding
from .jobs import Jobs
from .labels_layers import LabelsLayers
from .status import StatusLine

if TYPE_CHECKING:
    import napari

    from ..engine.annotation.annotator import Annotator
    from .layers import LayerLabels, SliceKey


class ToolHost:
    """The dock's services for its tools (see the module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer, *, image: Callable[[], Any], encoding: Encoding,
                 labels: LabelsLayers, jobs: Jobs, status: StatusLine, show_table: Callable[[Any], None],
                 overwrite: Callable[[], bool], use_model: Callable[[Any, bool], None],
                 rename_model: Callable[[str], None]) -> None:
        self.viewer = viewer
        self.jobs = jobs
        self.status = status
        self.labels = labels
        self._image, self._encoding = image, encoding
        self._show_table, self._overwrite, self._use_model = show_table, overwrite, use_model
        self._rename_model = rename_model
        self._head = None
        self._head_listeners: list[Callable[[Any, str], None]] = []

    @property
    def image_layer(self) -> napari.layers.Image | None:
        return self._image()

    @property
    def model(self):
        return self._encoding.model

    def model_request(self) -> tuple[str, str]:
        """``(name or path, device)`` of the model in use (as the dock's settings name it)."""
        return self._encoding.model_key or ("", "")

    def use_model(self, model, *, hq_token_only: bool = False) -> None:
        """Put ``model`` to work for every image of the dock (its stored embeddings stay valid
        when its encoder is the same) and decode the prompts again."""
        self._use_model(model, hq_token_only)

    def rename_model(self, path: str) -> None:
        """The model in use was saved as ``path``: the dock names it so from now on."""
        self._rename_model(path)

    @property
    def head(self):
        """The instance head segment everything uses (``ais``, ``apg``), or ``None``."""
        return self._head

    def set_head(self, head, description: str) -> None:
        """Put an instance head to work (trained in Adapt, or loaded from a file); the tools
        that use it are told (``on_head``)."""
        self._head = head
        for listener in self._head_listeners:
            listener(head, description)

    def on_head(self, listener: Callable[[Any, str], None]) -> None:
        self._head_listeners.append(listener)

    @property
    def overwrite(self) -> bool:
        """Whether results may overwrite labels a user already has."""
        return self._overwrite()

    def ready(self, job: str, busy: str, missing: str) -> tuple[Annotator, SliceKey] | None:
        """The chosen image's annotator turned to the plane on screen and the slice shown, or
        ``None`` after telling the user why not (no image or model yet, the tool's ``job``
        already running)."""
        image = self._image()
        if image is None or self.model is None:
            show_info(f"SAM-HQ: {missing}")
            return None
        if self.jobs.running(job) is not None:
            show_info(f"SAM-HQ: {busy} is already running")
            return None
        return self._encoding.oriented(image)

    def target(self, job: str, busy: str, missing: str) -> tuple[Annotator, SliceKey, Any] | None:
        """``ready``, and the labels layer a tool writes to (bound to the annotator), or
        ``None`` after telling the user why not (also: unusable labels)."""
        found = self.ready(job, busy, missing)
        if found is None:
            return None
        ann, here = found
        image = self._image()
        try:
            target = self.labels.target(image)
            ann.labels = self.labels.volume(target, image)
        except (ValueError, OSError) as err:
            show_error(f"SAM-HQ: {err}")
            return None
        return ann, here, target

    def labels_volume(self, target) -> LayerLabels:
        return self.labels.volume(target, self._image())

    def show_table(self, table) -> None:
        """A per-object table (pandas) in the dock's results table."""
        self._show_table(table)

    def settings(self, cls, form, **fixed):
        """``cls`` read from a magicgui ``form`` (``fixed`` wins), or ``None`` after showing
        what is wrong."""
        from .forms import read_settings

        try:
            return read_settings(cls, form, **fixed)
        except ValueError as err:
            show_error(f"SAM-HQ: {err}")
            return None

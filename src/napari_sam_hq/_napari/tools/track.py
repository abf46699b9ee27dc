"""**Track**: link the objects of a labels layer through time (its first axis), with divisions
(laptrack): a labels layer with one id per track and a napari Tracks layer with the lineage;
**Fix division** on the selected track (an invented division is cut, a missed one is linked to
the track that ends just before it starts, nearest first); **Export…** the CTC files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QPushButton, QSpinBox

from ...engine.tracking.linking import TrackSettings
from ..forms import settings_form
from ..host import ToolHost

JOB = "track"
TRACKS_LAYER = "SAM-HQ tracks"


class TrackPanel(QGroupBox):
    def __init__(self, host: ToolHost) -> None:
        super().__init__("Track")
        self.host = host
        self.tracks = None  # the last engine.tracking.Tracks
        self._frames = None  # the labels they were linked from (for the export)
        self._tracked_layer = None
        self.track_form = settings_form(
            TrackSettings,
            {
                "max_distance": dict(min=1.0, max=1000.0, step=1.0, tooltip="How far (pixels) a cell moves a frame"),
                "max_gap": dict(min=0, max=20, tooltip="Frames a cell may be missing and keep its track"),
                "division_distance": dict(min=0.0, max=1000.0, step=1.0,
                                          tooltip="How far a daughter's centre may be from its parent's "
                                                  "(0: no divisions)"),
            },
            labels={"max_distance": "Max move (px)", "max_gap": "Max gap (frames)",
                    "division_distance": "Division distance (px)"},
        )
        self.first_spin, self.last_spin = QSpinBox(), QSpinBox()
        for spin in (self.first_spin, self.last_spin):
            spin.setRange(0, 10**6)
        self.first_spin.setToolTip("The first frame to track")
        self.last_spin.setToolTip("The last frame to track (0: the movie's last)")
        self.track_button = QPushButton("Track")
        self.track_button.setToolTip("Link the objects of the labels layer through time (first axis), with "
                                     "divisions; ids may differ from frame to frame")
        self.fix_button = QPushButton("Fix division")
        self.fix_button.setToolTip("On the selected track: cut its link to a parent (an invented division), or "
                                   "link it to the track that ends just before it starts (a missed one)")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("labels.tif, res_track.txt and ctc/ (the Cell Tracking Challenge format)")
        for b in (self.fix_button, self.export_button):
            b.setEnabled(False)
        form = QFormLayout(self)
        frames = QHBoxLayout()
        frames.addWidget(self.first_spin)
        frames.addWidget(self.last_spin)
        form.addRow("Frames (last 0: all)", frames)
        form.addRow(self.track_form.native)
        row = QHBoxLayout()
        row.addWidget(self.track_button, 1)
        row.addWidget(self.fix_button)
        row.addWidget(self.export_button)
        form.addRow(row)
        self.track_button.clicked.connect(lambda: self.track())
        self.fix_button.clicked.connect(lambda: self.fix_division())
        self.export_button.clicked.connect(self._export_dialog)

    def track(self):
        """Link the chosen labels layer through time. Returns the worker, or ``None``."""
        host = self.host
        source = host.labels.chosen_layer()
        if source is None:
            show_info("SAM-HQ: pick the labels layer to track in the Labels box (segment the frames first: "
                      "Segment everything with Whole stack, or propagate)")
            return None
        if source.ndim < 3:
            show_info("SAM-HQ: tracking needs a movie (T x Y x X): this labels layer is 2D")
            return None
        if host.jobs.running(JOB) is not None:
            show_info("SAM-HQ: tracking is already running")
            return None
        settings = host.settings(TrackSettings, self.track_form)
        if settings is None:
            return None
        frames = source.data[0] if source.multiscale else source.data
        first, last = self.first_spin.value(), self.last_spin.value() or frames.shape[0] - 1
        if not 0 <= first < last < frames.shape[0]:
            show_info(f"SAM-HQ: frames {first}-{last}: choose two frames of the movie's 0-{frames.shape[0] - 1}, "
                      "the first before the last")
            return None
        frames = _Window(frames, first, last + 1)
        return host.jobs.run(JOB, _track_job(frames, settings), button=self.track_button,
                             returned=lambda tracks: self._on_tracked(source, frames, tracks),
                             message=f"Tracking '{source.name}'…")

    def _on_tracked(self, source, frames, tracks) -> None:
        self.tracks, self._frames = tracks, frames
        name = f"{source.name} tracked"
        from ...engine.tracking.ctc import relabel_frame

        data = np.zeros(tuple(source.data.shape), np.uint32)
        for t in range(len(frames)):  # each object with its track id, a frame at a time
            data[frames.start + t] = relabel_frame(frames[t], t, tracks.ids)
        layers = self.host.viewer.layers
        if name in layers:
            layers[name].data = data
        else:
            self.host.viewer.add_labels(data, name=name, scale=source.scale, translate=source.translate)
        self._tracked_layer = layers[name]
        self._draw_tracks(source)
        self.fix_button.setEnabled(True)
        self.export_button.setEnabled(True)
        self.host.status.progress(1.0)
        self.host.status.say(f"Tracked: {len(tracks.spans)} track(s), {len(tracks.divisions)} division(s). Select "
                             f"a track in '{name}' and Fix division to correct one.")

    def _draw_tracks(self, source=None) -> None:
        from ...engine.tracking.ctc import tracks_layer_data

        data, graph = tracks_layer_data(self.tracks)
        data[:, 1] += self._frames.start  # the window's frames at their place in the movie
        layers = self.host.viewer.layers
        if TRACKS_LAYER in layers:
            layers[TRACKS_LAYER].data = data
            layers[TRACKS_LAYER].graph = graph
        elif len(data):
            ref = source or self._tracked_layer
            self.host.viewer.add_tracks(data, graph=graph, name=TRACKS_LAYER, scale=ref.scale,
                                        translate=ref.translate)

    def fix_division(self, track: int | None = None) -> str | None:
        """Fix the division of ``track`` (default: the selected label of the tracked layer): cut
        it from its parent, or link it to the nearest track ending in the frame before it starts.
        Returns what was done, or ``None`` after a message."""
        if self.tracks is None:
            show_info("SAM-HQ: track first")
            return None
        track = int(track if track is not None else self._tracked_layer.selected_label)
        try:
            done = self.tracks.fix_division(track)
        except ValueError as err:
            show_warning(f"SAM-HQ: {err}: select a daughter's track in the tracked labels layer")
            return None
        self._draw_tracks()
        self.host.status.say(f"Fixed: {done}.")
        return done

    def export(self, folder: str | Path, *, force: bool = False) -> tuple[Path, Path]:
        """Write the CTC files of the last tracking into ``folder``."""
        from ...engine.tracking.ctc import iter_write_ctc
        from ...model.steps import exhaust

        if self.tracks is None:
            raise RuntimeError("track first")
        out = exhaust(iter_write_ctc(folder, self._frames, self.tracks, force=force))
        self.host.status.say(f"Exported {out[0]} and {out[1]} (and ctc/).")
        return out

    def _export_dialog(self) -> None:  # pragma: no cover - a modal dialog
        folder = QFileDialog.getExistingDirectory(self, "Export tracks (CTC)")
        if folder:
            try:
                self.export(folder)
            except FileExistsError as err:
                show_warning(f"SAM-HQ: {err}")


class _Window:
    """Frames ``start..stop-1`` of a movie, read lazily (a track's frame 0 is ``start``)."""

    def __init__(self, data, start: int, stop: int) -> None:
        self.data, self.start, self.stop = data, start, stop
        self.shape = (stop - start, *data.shape[1:])

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, t: int):
        return self.data[self.start + t]


@thread_worker  # numpy and laptrack: no torch
def _track_job(frames, settings):
    from ...engine.tracking.linking import iter_link

    gen = iter_link(frames, settings)
    try:
        while True:
            yield next(gen)
    except StopIteration as stop:
        return stop.value

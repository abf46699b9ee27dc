"""**Measure labels**: per-object measurements of the chosen labels layer (regionprops'
columns, plane by plane in a worker; labels on disk are never loaded whole): a table in the
dock, the layer's features, CSV."""

from __future__ import annotations

from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QGroupBox, QHBoxLayout, QPushButton

from ..host import ToolHost
from ..jobs import process_events_until

JOB = "measure"


class MeasurePanel(QGroupBox):
    def __init__(self, host: ToolHost) -> None:
        super().__init__("Measure")
        self.host = host
        self.measurements = None  # the last measurement table (pandas), also in the layer's features
        self.measure_button = QPushButton("Measure labels")
        self.measure_button.setToolTip("Area/volume, centroid, bbox, diameter and intensities per label")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        row = QHBoxLayout(self)
        row.addWidget(self.measure_button, 1)
        row.addWidget(self.export_button)
        self.measure_button.clicked.connect(lambda: self.start_measure())
        self.export_button.clicked.connect(self._export_dialog)

    def measure(self):
        """Measure the chosen labels layer and return the table (``None`` after a message when
        there is nothing to measure). It runs as the button does, in the background, while
        this call processes Qt events until it is done: for scripts."""
        if self.start_measure() is None:
            return None
        # the job is cleared by the handler Jobs.run connected before the start: a handler
        # connected here, after it, missed the signal of a worker that had already finished
        # (a small image measures in less than a thread switch) and waited for ever
        process_events_until(lambda: self.host.jobs.running(JOB) is None)
        return self.measurements

    def start_measure(self):
        """Measure the chosen labels layer in the background: a table in the dock, in the
        layer's features and in ``measurements``; progress per plane; Cancel stops it.
        Returns the worker, or ``None`` after a message."""
        from ...engine.io.measure import iter_measure

        host = self.host
        target = host.labels.chosen_layer()
        if target is None:
            show_info("SAM-HQ: no labels layer to measure yet: commit objects first")
            return None
        if host.jobs.running(JOB) is not None:
            show_info("SAM-HQ: a measurement is already running")
            return None
        labels = target.data[0] if target.multiscale else target.data
        image = host.image_layer
        intensity = None
        if image is not None and not image.rgb:
            data = image.data[0] if image.multiscale else image.data
            if tuple(data.shape) == tuple(labels.shape):
                intensity = data
        try:
            planes = iter_measure(labels, intensity)
        except ValueError as err:
            show_error(f"SAM-HQ: {err}")
            return None
        self.measurements = None
        return host.jobs.run(JOB, _measure_job(planes, target.name), button=self.measure_button,
                             returned=lambda table: self._on_measured(table, target),
                             message=f"Measuring '{target.name}'…")

    def _on_measured(self, table, target) -> None:
        self.measurements = table
        features = table.copy()
        features.insert(0, "index", features["label"])
        target.features = features
        self.host.show_table(table)
        self.export_button.setEnabled(True)
        self.host.status.progress(1.0)
        self.host.status.say(f"Measured {len(table)} object(s) in '{target.name}' (also in the layer's features).")

    def export_measurements(self, path: str) -> None:
        from ...engine.io.files import write_table

        if self.measurements is None:
            raise RuntimeError("measure the labels first")
        write_table(path, self.measurements)

    def _export_dialog(self) -> None:  # pragma: no cover - a modal dialog
        path, _ = QFileDialog.getSaveFileName(self, "Measurements", "measurements.csv", "CSV (*.csv)")
        if path:
            self.export_measurements(path)


@thread_worker  # numpy only: no torch, no OpenMP team to give back
def _measure_job(planes, name: str):
    while True:
        try:
            fraction = next(planes)
        except StopIteration as done:
            return done.value
        yield fraction, f"Measuring '{name}': {100 * fraction:.0f}% of the planes"

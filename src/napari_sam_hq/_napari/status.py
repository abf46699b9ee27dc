"""The dock's status line: a progress bar and a line of text, and the errors a script's
``wait()`` raises (every error the user was shown, unless the work went on regardless)."""

from __future__ import annotations

from napari.utils.notifications import show_error
from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget


class StatusLine(QWidget):
    """``say(text)``, ``progress(fraction)``, ``report_error(message)``; ``label`` and ``bar``
    are the Qt controls (tests read them)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.label = QLabel("Pick an image and click on an object (the model loads then).")
        self.label.setWordWrap(True)
        self.errors: list[Exception] = []  # reported to the user, not yet raised by the dock's wait()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)

    @property
    def text(self) -> str:
        return self.label.text()

    def say(self, text: str) -> None:
        self.label.setText(text)

    def progress(self, fraction: float) -> None:
        self.bar.setValue(int(1000 * fraction))

    def show_progress(self, message: tuple[float, str]) -> None:
        """A worker's ``(fraction, text)``."""
        fraction, text = message
        self.progress(fraction)
        self.say(text)

    def report_error(self, message: str, err: Exception | None = None, *, recoverable: bool = False) -> None:
        """Show an error to the user; unless the work went on regardless (``recoverable``),
        the dock's ``wait()`` raises it to a script: ``err``, or a ``RuntimeError`` with the
        message for errors a worker reported without raising."""
        if not recoverable:
            self.errors.append(err if err is not None else RuntimeError(message))
        show_error(f"SAM-HQ: {message}")
        self.say(f"Error: {message}")

    def take_errors(self) -> list[Exception]:
        errors, self.errors = self.errors, []
        return errors

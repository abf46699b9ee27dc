"""The dock's settings: model and device, the image and labels layers, the embedding store,
labels on disk and tiles. Plain controls and the values read from them; the dock binds them."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from . import constants as C


class SettingsPanel(QWidget):
    """Controls as attributes (``model_combo``, ``image_combo``, ``labels_combo``, ``store_edit``,
    ...), read through the methods below."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.addItems(C.MODEL_CHOICES)
        self.model_combo.setToolTip("A registry model (downloaded once) or the path of a .pth file / HF folder")
        self.browse_button = QPushButton("Browse…")
        self.device_combo = QComboBox()
        self.device_combo.addItems(C.DEVICE_CHOICES)
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip(f"Committed objects go here; '{C.LABELS_LAYER}' is created if needed")
        self.store_edit = QLineEdit()
        self.store_edit.setPlaceholderText("cache folder (default)")
        self.store_edit.setToolTip(
            "Folder of the embedding store (zarr). Empty: the cache folder. 'none': keep embeddings "
            "in RAM only. Reopening an image with the same model reuses stored embeddings."
        )
        self.labels_dir_edit = QLineEdit()
        self.labels_dir_edit.setPlaceholderText("next to the store (default)")
        self.labels_dir_edit.setToolTip(
            f"Folder for '{C.LABELS_LAYER}' kept on disk (<image>.labels.zarr); reopening the image opens them"
        )
        self.disk_threshold_spin = QDoubleSpinBox()
        self.disk_threshold_spin.setRange(0.0, 1024.0)
        self.disk_threshold_spin.setDecimals(2)
        self.disk_threshold_spin.setSuffix(" GB")
        self.disk_threshold_spin.setValue(C.LABELS_DISK_GB)
        self.disk_threshold_spin.setToolTip(
            f"New '{C.LABELS_LAYER}' larger than this (as a dense array) live on disk, chunk by chunk; 0: always"
        )
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(256, 4096)
        self.tile_spin.setSingleStep(128)
        self.tile_spin.setValue(C.TILE_SIZE)
        self.tile_spin.setToolTip("Planes larger than this are embedded as overlapping tiles")
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 2048)
        self.overlap_spin.setSingleStep(32)
        self.overlap_spin.setValue(C.TILE_OVERLAP)
        self.overlap_spin.setToolTip("Objects up to this size always fit in one tile (at most half the tile)")

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Model", _row(self.model_combo, self.browse_button))
        form.addRow("Device", self.device_combo)
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow("Store", self.store_edit)
        form.addRow("Labels on disk", _row(self.labels_dir_edit, QLabel("above"), self.disk_threshold_spin))
        form.addRow("Tiles", _row(self.tile_spin, QLabel("overlap"), self.overlap_spin, stretch_first=False))
        self.browse_button.clicked.connect(self._browse)

    def model_request(self) -> tuple[str, str]:
        """``(model name or path, device)`` as chosen."""
        return self.model_combo.currentText().strip(), self.device_combo.currentText()

    def store_text(self) -> str:
        return self.store_edit.text().strip()

    def labels_dir(self) -> Path | None:
        text = self.labels_dir_edit.text().strip()
        return Path(text).expanduser() if text else None

    def tiles(self) -> tuple[int, int]:
        """``(tile size, overlap)``, the overlap at most half a tile."""
        size = self.tile_spin.value()
        return size, min(self.overlap_spin.value(), size // 2)

    def _browse(self) -> None:  # pragma: no cover - a modal dialog
        path, _ = QFileDialog.getOpenFileName(self, "SAM-HQ checkpoint", "", "Checkpoints (*.pth *.pt *.safetensors)")
        if path:
            self.model_combo.setCurrentText(path)


def _row(*widgets: QWidget, stretch_first: bool = True) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, w in enumerate(widgets):
        row.addWidget(w, 1 if i == 0 and stretch_first else 0)
    return row

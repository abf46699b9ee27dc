"""Layer names, colours, shortcuts and choices: the plugin's conventions, in one place."""

from __future__ import annotations

POINTS_LAYER = "SAM-HQ points"
BOXES_LAYER = "SAM-HQ boxes"
PREVIEW_LAYER = "SAM-HQ preview"
LABELS_LAYER = "SAM-HQ labels"

POSITIVE, NEGATIVE = "positive", "negative"
POSITIVE_COLOR, NEGATIVE_COLOR = "#00ff66", "#ff2a8c"

MODEL_CHOICES = ("vit_tiny", "vit_b", "vit_l", "vit_h")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

# Viewer-wide shortcuts (napari key-binding syntax).
KEY_COMMIT = "Shift-C"
KEY_NEGATIVE = "Shift-N"
KEY_CLEAR = "Shift-X"

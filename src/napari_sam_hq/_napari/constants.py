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

# Embeddings: tiles for planes larger than the model input, prefetch, what stays in RAM.
TILE_SIZE = 1024
TILE_OVERLAP = 256
PREFETCH = 2  # slices on each side of the one on screen, encoded next
STORE_RAM_ENTRIES = 16  # float16 embeddings kept by a store without a folder (~6 MB each)
STORE_RAM_ENTRIES_ON_DISK = 4  # ... by one on disk, in RAM besides READY_TILES (a miss: one zarr read)
READY_TILES = 10  # decoder-ready tiles, every tile of a 2048 x 2048 plane and its coarse pass (~18 MB each)
LABELS_DISK_GB = 1.0  # new "SAM-HQ labels" larger than this (dense) live in a zarr on disk

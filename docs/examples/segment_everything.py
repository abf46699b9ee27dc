"""Segment everything in an image: instance labels without prompts, then measure them.

    python docs/examples/segment_everything.py
"""

import os

from skimage import data

from napari_sam_hq.engine import EmbeddingStore, SegmentationSession
from napari_sam_hq.engine.automatic.everything import AutoSettings
from napari_sam_hq.engine.automatic.modes import iter_segment_everything
from napari_sam_hq.engine.io.measure import measure
from napari_sam_hq.model import load_model
from napari_sam_hq.model.common import exhaust

model = load_model(os.environ.get("NAPARI_SAM_HQ_MODEL", "vit_tiny"), device="auto")
image = data.coins()
session = SegmentationSession(model, image, store=EmbeddingStore(None))   # RAM only
settings = AutoSettings(points_per_side=int(os.environ.get("EXAMPLE_POINTS_PER_SIDE", 32)))
labels = exhaust(iter_segment_everything(session, [()], settings))
table = measure(labels, image)
print(labels.max(), "objects; median area", table["area"].median() if len(table) else 0)

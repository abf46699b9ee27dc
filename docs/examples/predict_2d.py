"""Segment objects in a 2D image from points and boxes, without napari.

    python docs/examples/predict_2d.py

Uses the registry model vit_tiny (downloaded once) unless NAPARI_SAM_HQ_MODEL names another
model or a checkpoint file.
"""

import os

import numpy as np
from skimage import data

from napari_sam_hq.engine import SamHQPredictor
from napari_sam_hq.model import load_model

model = load_model(os.environ.get("NAPARI_SAM_HQ_MODEL", "vit_tiny"), device="auto")
predictor = SamHQPredictor(model)

image = data.coins()                              # 303 x 384 uint8, shipped with scikit-image
predictor.set_image(image)                        # grey to RGB, PIL resize, encoder

one = predictor.predict(point_coords=[[155, 50]], point_labels=[1])     # (x, y) pixels
print("one point:", one.masks.shape, "score", round(float(one.scores[0]), 3))

boxes = np.array([[131, 28, 179, 74], [192, 30, 240, 73], [25, 104, 67, 146]])  # XYXY
many = predictor.predict_batch(boxes=boxes)       # three objects, one batched call

labels = np.zeros(image.shape, np.uint32)         # one id per object, first come first served
for i, mask in enumerate(many.masks[:, 0], start=1):
    labels[mask & (labels == 0)] = i
print("labels:", labels.dtype, labels.shape, "objects", len(np.unique(labels)) - 1)

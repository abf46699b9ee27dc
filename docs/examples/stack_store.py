"""A 3D stack: embeddings in an on-disk store (resumable, reused), a prompt, propagation.

    python docs/examples/stack_store.py [STORE_FOLDER]
"""

import os
import sys
import tempfile

import numpy as np
from scipy import ndimage

from napari_sam_hq.engine import (
    EmbeddingStore,
    SegmentationSession,
    iter_propagate,
    write_propagation,
)
from napari_sam_hq.model import load_model
from napari_sam_hq.model.common import exhaust

model = load_model(os.environ.get("NAPARI_SAM_HQ_MODEL", "vit_tiny"), device="auto")
# a Z x Y x X stack: a blurred, noisy ellipsoid "nucleus" (uint16, like a camera)
z, y, x = np.indices((8, 256, 256))
nucleus = ((z - 4) / 3.5) ** 2 + ((y - 128) / 40) ** 2 + ((x - 128) / 50) ** 2 <= 1
rng = np.random.default_rng(0)
stack = (300 + 2500 * ndimage.gaussian_filter(nucleus * 1.0, (0.5, 2, 2)) + rng.normal(0, 60, nucleus.shape))
stack = stack.clip(0, 65535).astype(np.uint16)
root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "cells3d.sam-hq.zarr")
session = SegmentationSession(model, stack, store=EmbeddingStore(root))

for _fraction, _key in session.iter_embed([(4,)]):  # the slice we look at first
    pass
[obj] = session.segment((4,), [{"point_coords": [[128, 128]], "point_labels": [1]}])
print("slice 4:", obj.mask.sum(), "pixels, score", round(obj.score, 3))

labels = np.zeros(stack.shape, np.uint32)
labels[4][obj.mask] = 1
found = exhaust(iter_propagate(session, {1: {4: obj.mask}}))   # both ways until it ends
for z, plane in write_propagation(labels, found).items():
    labels[z] = plane
print("object 1 on slices", sorted(np.nonzero(labels.any(axis=(1, 2)))[0].tolist()))

exhaust(session.iter_embed())                     # the rest of the stack; stored for next time
print("store:", root, round(session.store.size_bytes() / 2**20, 1), "MB")

"""Annotate a large volume without napari or Qt: the annotator, labels on disk, propagation.

    python docs/examples/annotate_volume.py [LABELS_FOLDER]

The volume here is generated lazily with dask (200 x 2048 x 2048 uint16: 1.6 GB as an
image, 3.2 GB as dense uint32 labels); only the planes prompted or propagated through are
ever computed, and the labels live in a zarr folder on disk. Reopening the folder gives
back the labels, the next free id and the slices each object was committed on.
"""

import os
import sys
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np

from napari_sam_hq.engine import EmbeddingStore
from napari_sam_hq.engine.annotation.annotator import Annotator, SlicePrompts
from napari_sam_hq.engine.annotation.labels import LabelVolume, open_labels_zarr
from napari_sam_hq.engine.volumes.propagation import PropagationSettings
from napari_sam_hq.model import LazyModel

shape = (200, 2048, 2048)


def plane(block_info=None):
    """A bright tube through every slice on a dim background, one 1024 x 1024 chunk."""
    (z0, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    out = np.full((1, y1 - y0, x1 - x0), 400, np.uint16)
    out[0][(yy - 900 - 2 * z0) ** 2 + (xx - 1100) ** 2 <= 90**2] = 3000
    return out


volume = da.map_blocks(plane, dtype=np.uint16, chunks=((1,) * shape[0], (1024, 1024), (1024, 1024)))
folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
labels = LabelVolume(open_labels_zarr(folder / "volume.labels.zarr", shape))   # created, or reopened

annotator = Annotator(
    volume,
    model=LazyModel(os.environ.get("NAPARI_SAM_HQ_MODEL", "vit_tiny"), device="cpu"),  # loads on first use
    store=EmbeddingStore(folder / "embeddings.zarr"),
    labels=labels,
)
prompts = {(100,): SlicePrompts(points=[(1100.0, 1100.0)], labels=[1])}   # slice 100, plane (x, y)
annotator.decode(prompts)             # nothing stored yet: queues the one tile under the point
for step in annotator.iter_encode():  # progress after each encoder step
    print(f"\rencoding slice {step.key}: {step.fraction:.0%}", end="")
print()
preview, errors = annotator.decode(prompts)
print("objects on slice 100:", len(preview[(100,)]), "pending:", [o.pending for o in preview[(100,)]])
for _ in annotator.iter_encode():     # a better tile, if the first one cut the object
    pass
annotator.decode(prompts)
[label] = annotator.commit()           # one undo step; the id comes from the labels' counter
print("committed label", label, "next id", labels.next_id())

seeds = annotator.propagation_seeds((100,), [label])
run = annotator.iter_propagate((100,), seeds, PropagationSettings(score_threshold=0.0, iou_threshold=0.0,
                                                                   max_slices=3))
try:
    while True:
        fraction, message = next(run)
except StopIteration as done:
    found = done.value
annotator.apply_propagation((100,), found, seeds)
print("propagated to slices", sorted(found))

again = LabelVolume(open_labels_zarr(folder / "volume.labels.zarr", shape))
print("reopened: next id", again.next_id(), "seeds", {k: sorted(v) for k, v in again.seeds.items()})

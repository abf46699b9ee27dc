"""Per-object measurements of a labels image (scikit-image ``regionprops_table``).

Columns: ``label``; ``area`` (2D, pixels) or ``volume`` (3D, voxels); ``centroid-0`` ...
(data order: slices, then y, then x); ``bbox-0`` ... (min corner, then max corner,
exclusive); ``equivalent_diameter`` (of a circle/sphere with the same area/volume); and
with an intensity image ``intensity_mean``, ``intensity_min``, ``intensity_max``,
``intensity_std``. Units are pixels unless ``spacing`` (per axis) is given.
"""

from __future__ import annotations

import numpy as np


def measure(labels: np.ndarray, image: np.ndarray | None = None, *, spacing: tuple[float, ...] | None = None):
    """A pandas DataFrame with one row per label (module docstring)."""
    import pandas as pd
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == bool:
            labels = labels.astype(np.uint8)
        else:
            raise ValueError(f"labels must be an integer image, got {labels.dtype}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    if image is not None:
        image = np.asarray(image)
        if image.shape != labels.shape:
            raise ValueError(
                f"the image has shape {image.shape}, the labels {labels.shape}: measure intensities on "
                "the image the labels were made from (one channel)"
            )
    props = ["label", "area", "centroid", "bbox", "equivalent_diameter_area"]
    if image is not None:
        props += ["intensity_mean", "intensity_min", "intensity_max", "intensity_std"]
    kwargs = {} if spacing is None else {"spacing": tuple(float(s) for s in spacing)}
    table = pd.DataFrame(regionprops_table(labels, intensity_image=image, properties=props, **kwargs))
    table = table.rename(columns={"equivalent_diameter_area": "equivalent_diameter"})
    if labels.ndim == 3:
        table = table.rename(columns={"area": "volume"})
    return table

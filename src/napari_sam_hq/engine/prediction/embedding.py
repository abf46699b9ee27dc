"""``ImageEmbedding``: what ``set_image`` computes, as numpy arrays (no torch needed to hold,
store or compare one)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageEmbedding:
    """What ``set_image`` computes that cannot be recomputed cheaply, as numpy arrays.

    ``image_embedding`` 1 x 256 x 64 x 64; ``early_feature`` 1 x 64 x 64 x Cv (the ViT
    feature SAM-HQ fuses) and/or ``hq_features`` 1 x 32 x 256 x 256 (the decoder's
    prompt-independent HQ features, computed from the two). At least one of the last two
    is needed; with ``hq_features`` the decoder is ready without recomputing them (the
    embedding store keeps this pair). float32, or float16 for storage. Also the frames
    and the model that made them.
    """

    image_embedding: np.ndarray
    early_feature: np.ndarray | None
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_name: str
    checkpoint_id: str
    hq_features: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        parts = (self.image_embedding, self.early_feature, self.hq_features)
        return sum(p.nbytes for p in parts if p is not None)

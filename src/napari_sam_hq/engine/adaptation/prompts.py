"""What adaptation and refinement both give the decoder: an object's mask as the decoder's mask
input (``mask_to_logits``, in the 256 x 256 low-resolution grid), and the prompt refinement
makes from a user's label (``object_prompts``: box, innermost point, mask), which training
imitates for its ``refine`` prompt kind. ``training`` and ``refine`` import this; it imports
neither."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..prediction.transforms import Frames
from ..volumes.propagation import prompt_from_mask
from ..volumes.tiling import TileGrid, prompt_extent

LOW = 256  # the decoder's output grid
MASK_LOGIT = 8.0  # a mask given as the decoder's mask input: +-MASK_LOGIT inside / outside


def low_res(mask: np.ndarray, frames: Frames) -> torch.Tensor:
    """The mask in the decoder's 256 x 256 grid (area resize to the input frame / 4, padded)."""
    ih, iw = frames.input_size
    h, w = max(1, round(ih / 4)), max(1, round(iw / 4))
    t = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None]
    small = F.interpolate(t, size=(h, w), mode="area")[0, 0]
    out = torch.zeros(LOW, LOW)
    out[:h, :w] = small
    return out


def mask_to_logits(mask: np.ndarray, frames: Frames) -> torch.Tensor:
    """An ``H x W`` bool mask (original frame of ``frames``) as the decoder's mask input:
    ``256 x 256`` logits, ``+MASK_LOGIT`` inside, ``-MASK_LOGIT`` outside and on the padding,
    in between where a low-res cell is partly covered."""
    return MASK_LOGIT * (2 * low_res(mask, frames) - 1)


@dataclass(frozen=True)
class RefineSettings:
    """What prompts each object (its box and/or an interior point, and its mask), when the old mask is
    kept (``min_iou``, ``min_area`` pixels), objects per decoder batch, and the decoder's
    ``hq_token_only``."""

    use_box: bool = True
    use_point: bool = True
    use_mask: bool = True
    min_iou: float = 0.5
    min_area: int = 9
    batch: int = 16
    hq_token_only: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not (self.use_box or self.use_point):
            problems.append("prompt each object with its box or an interior point (the mask input alone "
                            "does not say where the object is)")
        if not 0.0 <= self.min_iou <= 1.0:
            problems.append(f"min_iou must be between 0 and 1, got {self.min_iou}")
        if self.min_area < 1 or self.batch < 1:
            problems.append("min_area and batch must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))


def object_prompts(mask: np.ndarray, origin: tuple[int, int], grid: TileGrid, settings: RefineSettings) -> dict:
    """The prompt of one object, from its ``mask`` (a crop whose top-left pixel is
    ``origin`` = (y, x) of the plane): a ``session.segment`` object dict, with the box and
    innermost point that propagation uses (``propagation.prompt_from_mask``)."""
    y0, x0 = origin
    found = prompt_from_mask(mask)  # box and innermost pixel, crop frame -> plane frame
    box = found["box"] + np.array([x0, y0, x0, y0], float)
    point = found["point_coords"] + np.array([x0, y0], float)
    obj: dict = {}
    if settings.use_box:
        obj["box"] = box
    if settings.use_point:
        obj.update(point_coords=point, point_labels=np.array([1]))
    if settings.use_mask:
        # the mask input lives in the frame of the tile that will answer (the session's choice)
        tile = grid.choose(prompt_extent(point if settings.use_point else None, box))
        th, tw = tile.y1 - tile.y0, tile.x1 - tile.x0
        local = np.zeros((th, tw), bool)
        ys, xs = slice(max(y0, tile.y0), min(y0 + mask.shape[0], tile.y1)), \
            slice(max(x0, tile.x0), min(x0 + mask.shape[1], tile.x1))
        local[ys.start - tile.y0 : ys.stop - tile.y0, xs.start - tile.x0 : xs.stop - tile.x0] = \
            mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        obj["mask_input"] = mask_to_logits(local, Frames.for_image(th, tw)).numpy()
        obj["tile"] = tile
    return obj

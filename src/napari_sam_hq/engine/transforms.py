"""From a user's image and prompts to the model's frames, and masks back.

Frames:
- *original*: the image as given, ``(H, W)``; points are (x, y) pixels, boxes XYXY.
- *model input*: resized so the longest side is 1024 (``input_size = (h, w)``), then
  zero-padded to 1024 x 1024 at the bottom and right.
- *low-res*: the decoder's 256 x 256 logits, which cover the padded model input.

Intensity rules (``to_model_rgb``):
- ``uint8`` is used as it is (exactly the official path); ``bool`` becomes 0 / 255.
- Any other dtype is mapped linearly from ``contrast_limits`` (default: the minimum and
  maximum of the finite values, over all channels together so colours keep their
  balance) to 0-255, clipped. NaN and +-inf become the low limit. A constant image maps to 0.
- ``H x W`` and ``H x W x 1`` are grey, copied to R, G and B. ``H x W x 2`` is a
  two-colour image shown as red and green (blue black). ``H x W x 3`` is RGB.
  ``H x W x 4`` is RGBA; alpha is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MODEL_SIZE = 1024
LOW_RES = 256


def preprocess_shape(h: int, w: int, long_side: int = MODEL_SIZE) -> tuple[int, int]:
    """``(h, w)`` of the model input for an ``(H, W)`` image (the official rounding)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def to_model_rgb(
    image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None
) -> np.ndarray:
    """``H x W x 3`` RGB for the model: ``uint8`` for uint8 input, else float32 in [0, 255]."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        rgb = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] in (2, 3, 4):
        c = image.shape[-1]
        if c == 2:
            rgb = np.concatenate([image, np.zeros_like(image[..., :1])], axis=-1)
        else:
            rgb = image[..., :3]
    else:
        raise ValueError(
            f"an image of shape {image.shape} is not H x W or H x W x C with C in 1-4. For a "
            "stack, pass one slice (image[z]); for channels first, move them last "
            "(np.moveaxis(image, 0, -1))."
        )
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if rgb.dtype == np.uint8 and contrast_limits is None:
        return np.ascontiguousarray(rgb)
    if rgb.dtype == bool:
        return rgb.astype(np.uint8) * np.uint8(255)
    if not (np.issubdtype(rgb.dtype, np.number)) or np.iscomplexobj(rgb):
        raise ValueError(f"image dtype {rgb.dtype} is not a real number type")
    data = rgb.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if contrast_limits is None:
        if not finite.any():
            return np.zeros(rgb.shape, np.float32)
        lo, hi = float(data[finite].min()), float(data[finite].max())
    else:
        lo, hi = (float(v) for v in contrast_limits)
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ValueError(f"contrast_limits {contrast_limits} must be finite with low <= high")
    data = np.where(finite, data, lo)
    if hi <= lo:
        return np.zeros(rgb.shape, np.float32)
    return np.clip((data - lo) * (255.0 / (hi - lo)), 0.0, 255.0).astype(np.float32)


def resize_longest_side(rgb: np.ndarray, long_side: int = MODEL_SIZE) -> np.ndarray:
    """PIL bilinear resize (antialiased when shrinking), as the official preprocessing.

    ``uint8`` goes through PIL's RGB path (bit-identical to the official code); float
    input is resized per channel in PIL's 32-bit float mode, keeping its precision.
    """
    h, w = preprocess_shape(rgb.shape[0], rgb.shape[1], long_side)
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c]), mode="F").resize((w, h), Image.BILINEAR))
        for c in range(rgb.shape[-1])
    ]
    return np.stack(channels, axis=-1)


@dataclass(frozen=True)
class Frames:
    """Sizes that relate the original image to the model input."""

    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (h, w), longest side 1024

    @classmethod
    def for_image(cls, h: int, w: int) -> Frames:
        return cls((h, w), preprocess_shape(h, w))

    @property
    def scale_xy(self) -> np.ndarray:
        """(sx, sy) from original pixels to model-input pixels."""
        (oh, ow), (ih, iw) = self.original_size, self.input_size
        return np.array([iw / ow, ih / oh])

    def coords_to_input(self, coords: np.ndarray) -> np.ndarray:
        """``... x 2`` (x, y) original pixels -> model-input pixels (float64)."""
        return np.asarray(coords, dtype=np.float64) * self.scale_xy

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """``... x 4`` XYXY original pixels -> model-input pixels."""
        boxes = np.asarray(boxes, dtype=np.float64)
        return (boxes.reshape(*boxes.shape[:-1], 2, 2) * self.scale_xy).reshape(boxes.shape)

    def logits_to_original(self, low_res: torch.Tensor) -> torch.Tensor:
        """``B x M x 256 x 256`` logits -> ``B x M x H x W`` logits in the original frame.

        256 -> 1024 bilinear, crop the padding, bilinear to the original size: the
        official postprocessing.
        """
        up = F.interpolate(low_res, (MODEL_SIZE, MODEL_SIZE), mode="bilinear", align_corners=False)
        up = up[..., : self.input_size[0], : self.input_size[1]]
        if tuple(up.shape[-2:]) == self.original_size:
            return up
        return F.interpolate(up, self.original_size, mode="bilinear", align_corners=False)

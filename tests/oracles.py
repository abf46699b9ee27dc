"""Test oracles: the official ``segment_anything_hq`` package and seeded random checkpoints.

The official package imports ``timm`` and ``torchvision`` at import time; neither installs
beside this torch. ``import_official`` registers minimal stand-ins for the few names it
uses. The image resize stand-in is what torchvision does for a PIL image (PIL bilinear),
so the oracle's preprocessing is the official one.
"""

from __future__ import annotations

import sys
import types
from functools import cache

import numpy as np
import torch
from torch import nn


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = sys.modules.get(name) or types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def _install_stand_ins() -> None:
    from PIL import Image

    def to_pil_image(arr):
        return Image.fromarray(np.asarray(arr))

    def resize(img, size):
        h, w = size
        return img.resize((w, h), Image.BILINEAR)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def batched_nms(boxes, scores, idxs, iou_threshold):
        """torchvision's batched NMS for the official AMG: greedy by decreasing score (ties by
        index), a box is dropped when its IoU with a kept box of its category exceeds the
        threshold; returns kept indices by decreasing score."""
        boxes = boxes.double()
        order = torch.argsort(scores.double(), descending=True, stable=True)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        alive = torch.ones(len(boxes), dtype=torch.bool)
        keep = []
        for i in order.tolist():
            if not alive[i]:
                continue
            keep.append(i)
            lt = torch.maximum(boxes[i, :2], boxes[:, :2])
            rb = torch.minimum(boxes[i, 2:], boxes[:, 2:])
            inter = (rb - lt).clamp(min=0).prod(dim=1)
            iou = inter / (areas[i] + areas - inter)
            alive &= ~((iou > iou_threshold) & (idxs == idxs[i]))
        return torch.tensor(keep, dtype=torch.int64)

    class DropPath(nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    _stub("torchvision")
    _stub("torchvision.transforms")
    _stub("torchvision.transforms.functional", resize=resize, to_pil_image=to_pil_image)
    _stub("torchvision.ops")
    _stub("torchvision.ops.boxes", batched_nms=batched_nms, box_area=box_area)
    _stub("timm")
    _stub("timm.models")
    _stub("timm.models.layers", DropPath=DropPath, to_2tuple=to_2tuple, trunc_normal_=nn.init.trunc_normal_)
    _stub("timm.models.registry", register_model=lambda fn: fn)


_STAND_INS = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.ops.boxes",
    "timm",
    "timm.models",
    "timm.models.layers",
    "timm.models.registry",
)


@cache
def import_official():
    """The official ``segment_anything_hq`` module (importable here thanks to the stand-ins).

    The official modules bind the names they use at import time, so the stand-ins are
    taken out of ``sys.modules`` again afterwards: other packages (transformers) probe
    for torchvision and must keep seeing that it is not installed.
    """
    saved = {name: sys.modules.get(name) for name in _STAND_INS}
    _install_stand_ins()
    try:
        import segment_anything_hq
        import segment_anything_hq.automatic_mask_generator  # noqa: F401 - binds torchvision.ops names
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return segment_anything_hq


def official_vit(*, embed_dim: int, depth: int, num_heads: int, global_attn_indexes) -> nn.Module:
    """An official ``Sam`` with a ViT encoder of any size (the official builder, other numbers)."""
    import_official()
    import importlib

    return importlib.import_module("segment_anything_hq.build_sam")._build_sam(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=num_heads,
        encoder_global_attn_indexes=list(global_attn_indexes),
    )


def official_model(name: str) -> nn.Module:
    return import_official().sam_model_registry[name]()


def noisy_state_dict(model: nn.Module, *, seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """The model's state dict with seeded noise on every floating-point tensor.

    Random initialisation leaves relative-position tables, TinyViT attention biases, the
    HQ token and LayerNorm/BatchNorm parameters zero or constant (and ``transformers``
    initialises matrices with std 1e-10), which would hide bugs in the code that uses
    them. Matrices get 10% relative noise, or a fresh 1/sqrt(fan-in) draw where their
    init is degenerate; vectors get N(0, ``scale``); BatchNorm variances stay positive.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=gen)
            if key.endswith("running_var"):
                value = value + scale * noise.abs()
            elif value.ndim >= 2:
                fan_in = max(1, value[0].numel())
                std = float(value.std()) if value.numel() > 1 else 0.0
                if std < 1e-4:
                    value = noise * fan_in**-0.5
                else:
                    value = value + 0.1 * std * noise
            else:
                value = value + scale * noise
        out[key] = value.clone()
    return out


def refresh_official(model: nn.Module) -> nn.Module:
    """Re-run ``.eval()`` so the official TinyViT re-caches its attention biases after loading."""
    model.train()
    return model.eval()

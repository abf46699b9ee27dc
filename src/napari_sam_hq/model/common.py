"""Shared by more than one block: ``LayerNorm2d``, ``MLPBlock`` and ``exhaust``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .steps import exhaust

__all__ = ["LayerNorm2d", "MLPBlock", "exhaust"]  # exhaust lives in steps (no torch); re-exported


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``B x C x H x W`` tensor.

    Same arithmetic as the official module (population variance, ``eps`` inside the
    square root); written with ``F.layer_norm`` on a channels-last view, which is one
    fused kernel instead of five element-wise passes.
    """

    def __init__(self, num_channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # B C H W -> B H W C, normalise over C, -> B C H W
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """``lin2(act(lin1(x)))``: the feed-forward block of the ViT and the two-way transformer."""

    def __init__(
        self, *, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(kernels.linear(x, self.lin1, act=self.act), self.lin2)

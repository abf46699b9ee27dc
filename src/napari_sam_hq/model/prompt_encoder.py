"""Prompt encoder: points, boxes and a low-resolution mask to sparse and dense embeddings.

Frames: point and box coordinates are (x, y) pixels in the *model input* frame (the image
resized so its longest side is 1024, before padding); boxes are XYXY. The dense grid is
the 64 x 64 image-embedding grid.

Point labels: 1 foreground, 0 background, -1 padding ("not a point"). Box corners use
embeddings 2 (top-left) and 3 (bottom-right).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Fourier features with a fixed random Gaussian matrix (a checkpoint buffer)."""

    def __init__(self, *, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``... x 2`` coordinates in [0, 1] -> ``... x 2F`` (sin, cos)."""
        # Always float32: in half precision sin(2 pi x) of pixel coordinates loses the position.
        m = self.positional_encoding_gaussian_matrix
        coords = (2 * coords.float() - 1) @ m.float()
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).to(m.dtype)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an ``(H, W)`` grid: ``2F x H x W``."""
        h, w = size
        m = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=m.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=m.device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # H x W x (x, y)
        return self._encode(grid).permute(2, 0, 1)  # H W C -> C H W

    def forward_with_coords(
        self, coords: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """``B x N x 2`` (x, y) pixels in an ``(H, W)`` frame -> ``B x N x 2F``."""
        scale = torch.tensor(
            [1.0 / image_size[1], 1.0 / image_size[0]], device=coords.device
        )
        return self._encode(coords.float() * scale)


class PromptEncoder(nn.Module):
    """Sparse embeddings ``B x N x 256`` and dense embeddings ``B x 256 x 64 x 64``."""

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(num_pos_feats=embed_dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid: ``1 x 256 x 64 x 64``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, *, pad: bool) -> torch.Tensor:
        """``B x N x 2`` (x, y), ``B x N`` labels -> ``B x (N + pad) x 256``.

        With ``pad`` (no box given) a padding point (0, 0) with label -1 is appended, as
        the model was trained.
        """
        points = points + 0.5  # pixel index -> pixel centre
        if pad:
            b = points.shape[0]
            points = torch.cat([points, points.new_zeros(b, 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((b, 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        pe = torch.where(lab == -1, self.not_a_point_embed.weight, pe)
        pe = pe + (lab == 0) * self.point_embeddings[0].weight
        return pe + (lab == 1) * self.point_embeddings[1].weight

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``B x 4`` XYXY -> ``B x 2 x 256`` (two corners)."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat(
            [self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0
        )
        return pe + corner_embed

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """``B x 1 x 256 x 256`` logits -> ``B x 256 x 64 x 64``."""
        return self.mask_downscaling(masks)

    def no_mask_dense(self) -> torch.Tensor:
        """Dense embedding when no mask is given: ``1 x 256 x 1 x 1`` (broadcasts)."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``B x N x 256`` and dense ``B x 256 x 64 x 64`` embeddings.

        Without a mask the dense embedding is the constant "no mask" vector, returned
        expanded (a view; no memory per prompt).
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        weight = self.no_mask_embed.weight
        parts = [weight.new_empty(bs, 0, self.embed_dim)]
        if points is not None:
            parts.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = self.no_mask_dense().expand(bs, -1, *self.image_embedding_size)
        return sparse, dense

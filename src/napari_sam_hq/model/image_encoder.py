"""ViT image encoder of SAM / SAM-HQ (ViT-B, ViT-L, ViT-H).

Windowed and global self-attention with decomposed relative positions (MViTv2), as in
the official ``ImageEncoderViT``. SAM-HQ also needs the *early feature*: the output of
the first global-attention block, before the neck; ``forward`` returns it beside the
image embedding.

Frames and shapes: the input is the normalised, zero-padded model input
``B x 3 x 1024 x 1024``; tokens are ``B x 64 x 64 x C`` (channels last, one token per
16 x 16 patch); the image embedding is ``B x 256 x 64 x 64``.

Attention runs through ``F.scaled_dot_product_attention`` with the relative-position
terms as an additive bias. For the global blocks that bias is ``heads x 4096 x 4096``
(805 MB for ViT-B); it is built and consumed a band of query rows at a time, which is
exact (softmax is per query row) and keeps the peak small. ``reference_attention``
keeps the plain formula for tests.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock, exhaust

# Upper bound on the bias band built at once, in bytes. Small bands stay in cache: measured
# on 2 cores, 2 query rows (25 MB for ViT-B) ran global attention about 1.8x faster than one
# 805 MB bias.
_BIAS_BAND_BYTES = 32 * 2**20


class ImageEncoderViT(nn.Module):
    """ViTDet-style backbone with a 256-channel neck.

    Returns ``(image_embedding B x 256 x 64 x 64, early_feature B x 64 x 64 x C)``.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        if not global_attn_indexes:
            raise ValueError("SAM-HQ needs at least one global-attention block (early feature)")
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(
            patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
        )
        # Absolute position embedding, 1 x 64 x 64 x C (pretraining grid).
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.early_index = min(global_attn_indexes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def num_steps(self) -> int:
        """Steps ``iter_forward`` yields: one per block."""
        return len(self.blocks)

    def iter_forward(self, x: torch.Tensor) -> Generator[int, None, tuple[torch.Tensor, torch.Tensor]]:
        """``forward`` one block at a time: yields the number of blocks done, returns the outputs."""
        x = self.patch_embed(x) + self.pos_embed
        early = x
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == self.early_index:
                early = x
            yield i + 1
        # B H W C -> B C H W
        return self.neck(x.permute(0, 3, 1, 2)), early

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x 3 x 1024 x 1024`` -> (``B x 256 x 64 x 64``, ``B x 64 x 64 x C``)."""
        return exhaust(self.iter_forward(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution: ``B x 3 x H x W`` -> ``B x H/p x W/p x C``."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # B C H W -> B H W C
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention unless ``window_size == 0``."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim=dim,
            num_heads=num_heads,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x H x W x C`` -> same."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative-position bias."""

    def __init__(self, *, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        # Relative-position tables, (2 * size - 1) x head_dim, per axis.
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, h, w, _ = x.shape
        # B H W 3C -> B N 3 heads d -> 3 B heads N d
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def _rel_terms(self, q: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-query relative terms: ``B x heads x H x W x H`` (rows) and ``... x W`` (columns)."""
        h, w = hw
        rh = relative_table(self.rel_pos_h, h)  # H(q) x H(k) x d
        rw = relative_table(self.rel_pos_w, w)  # W(q) x W(k) x d
        qg = q.unflatten(2, (h, w))  # B heads N d -> B heads H W d
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", qg, rh)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", qg, rw)
        return rel_h, rel_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x H x W x C`` -> same; attends over all ``H * W`` tokens of each item."""
        b, h, w, c = x.shape
        q, k, v = self._qkv(x)
        rel_h, rel_w = self._rel_terms(q, (h, w))
        n = h * w
        # Bias for `rows` query rows: B heads rows W H W, i.e. B heads (rows*W) N. It is written
        # into a contiguous buffer: a plain broadcast add picks a strided layout that the
        # reshape would copy again.
        bytes_per_row = b * self.num_heads * w * n * q.element_size()
        rows = max(1, min(h, _BIAS_BAND_BYTES // max(bytes_per_row, 1)))
        band = q.new_empty(b, self.num_heads, rows, w, h, w)
        out = q.new_empty(q.shape) if rows < h else None
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            bias = band[:, :, : r1 - r0]
            torch.add(rel_h[:, :, r0:r1, :, :, None], rel_w[:, :, r0:r1, :, None, :], out=bias)
            band_out = F.scaled_dot_product_attention(
                q[:, :, r0 * w : r1 * w], k, v, attn_mask=bias.view(b, self.num_heads, -1, n)
            )
            if out is None:
                out = band_out
            else:
                out[:, :, r0 * w : r1 * w] = band_out
        # B heads N d -> B N heads d -> B H W C
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)

    def reference_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Plain softmax(q k^T * scale + bias) v with the full bias; for tests only."""
        b, h, w, c = x.shape
        q, k, v = self._qkv(x)
        rel_h, rel_w = self._rel_terms(q, (h, w))
        n = h * w
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        scores = scores + (rel_h[..., :, None] + rel_w[..., None, :]).reshape(
            b, self.num_heads, n, n
        )
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


def relative_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Gather ``size x size x d`` embeddings of offsets ``q - k`` from a ``(2*size-1) x d`` table."""
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(
            f"relative-position table has {rel_pos.shape[0]} rows, expected {2 * size - 1} "
            f"for a {size}-token axis; the model input must be {size} tokens along each axis"
        )
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[coords[:, None] - coords[None, :] + (size - 1)]


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``B x H x W x C`` -> ``(B * nWin) x ws x ws x C``, zero-padding H and W up to ``ws``.

    Returns the windows and the padded ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    # B Hp W C -> B nh ws nw ws C -> B nh nw ws ws C
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of ``window_partition``: back to ``B x H x W x C``, padding removed."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    # B nh nw ws ws C -> B nh ws nw ws C -> B Hp Wp C
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x

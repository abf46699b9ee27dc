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

from . import kernels
from .common import LayerNorm2d, MLPBlock, exhaust

# The global attention's relative-position bias is built and consumed a band at a time:
# at most _QUERY_ROWS rows of queries and _BIAS_BAND_BYTES of bias per attention call.
# Measured on 2 cores (ViT-B, one global block): bands beat one 805 MB bias by 1.8x; one
# head of 16 query rows per call (17 MB, reused from the heap: under glibc's 32 MB mmap
# threshold) took 537-546 ms, against 579 ms for 4 rows x 6 heads and 629 ms for 2 rows.
_QUERY_ROWS = 16
_BIAS_BAND_BYTES = 24 * 2**20

# Tokens per band in the token-wise part of a block (norm2 + MLP): the ViT-B hidden layer
# of a band is then 12 MB (see Block.forward).
_ROWS = 1024


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
        self.banded = True  # the compute path (build.set_compute_path): bands on CPUs, whole tensors on GPUs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x H x W x C`` -> same (``banded`` picks the path; both give the official result)."""
        return self._forward_banded(x) if self.banded else self._forward_whole(x)

    def _forward_whole(self, x: torch.Tensor) -> torch.Tensor:
        """Few large kernels, for GPUs: every window (or the whole grid) in one attention call,
        the token-wise part on the whole tensor."""
        normed = self.norm1(x)
        if self.window_size > 0:
            attn = self.attn.windows_whole(normed, self.window_size)
        else:
            attn = self.attn.attend_whole(normed)
        out = x + self.attn.proj(attn)
        return out + self.mlp(self.norm2(out))

    def _forward_banded(self, x: torch.Tensor) -> torch.Tensor:
        """``B x H x W x C`` -> same, for CPUs.

        Same arithmetic as the official block, in bands: the attention of a band of
        windows needs no other row, and everything after the attention (``proj``,
        residuals, ``norm2``, MLP) is token-wise, so it runs ``_ROWS`` tokens at a time.
        Every intermediate then stays small: on the whole grid the MLP's hidden layer is
        48 MB (ViT-B), above the 32 MB at which glibc's malloc maps fresh zero-filled
        pages on every call, which cost ~10% of the encoder's time here.
        """
        x = x.contiguous()
        normed = self.norm1(x)
        if self.window_size > 0:
            ws = self.window_size
            attn = torch.empty_like(x)
            for r0 in range(0, x.shape[1], ws):
                attn[:, r0 : r0 + ws] = self.attn.window_band(normed[:, r0 : r0 + ws], ws)
        else:
            attn = self.attn.attend(normed)
        del normed
        # out = x + proj(attn); out += mlp(norm2(out)), a band of tokens at a time
        out = torch.empty_like(x)
        c = x.shape[-1]
        x_rows, attn_rows, out_rows = x.view(-1, c), attn.view(-1, c), out.view(-1, c)
        for r0 in range(0, x_rows.shape[0], _ROWS):
            band = out_rows[r0 : r0 + _ROWS]
            torch.add(x_rows[r0 : r0 + _ROWS], kernels.linear(attn_rows[r0 : r0 + _ROWS], self.attn.proj), out=band)
            band += self.mlp(self.norm2(band))
        return out


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
        return self._split_qkv(self.qkv(x))

    def _split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, h, w, _ = qkv.shape
        # B H W 3C -> B N 3 heads d -> 3 B heads N d
        return qkv.reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def _qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B x H x W x C`` -> contiguous q, k, v ``B x heads x N x d``, ``_ROWS`` tokens at a
        time (the whole projection would be 38 MB for ViT-B; see ``Block.forward``).
        Contiguous heads made the attention kernel ~8% faster than strided views."""
        b, h, w, c = x.shape
        n = h * w
        q, k, v = (x.new_empty(b, self.num_heads, n, c // self.num_heads) for _ in range(3))
        rows = x.reshape(b, n, c)
        for i in range(b):
            for r0 in range(0, n, _ROWS):
                r1 = min(n, r0 + _ROWS)
                # rows 3C -> rows 3 heads d -> 3 heads rows d
                qkv = kernels.linear(rows[i, r0:r1], self.qkv).view(r1 - r0, 3, self.num_heads, -1).permute(1, 2, 0, 3)
                q[i, :, r0:r1], k[i, :, r0:r1], v[i, :, r0:r1] = qkv
        return q, k, v

    def window_band(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Windowed attention over one band of windows, before ``proj``: ``B x h x W x C``
        -> same, ``h`` at most ``window_size`` rows.

        The official code zero-pads the normalised tokens to whole windows and projects
        the padding too; a zero token's q, k and v are the projection's bias, so only the
        real tokens are projected and the padding is filled with the bias (same result,
        about 20% less projection work on a 64 x 64 grid).
        """
        b, h, w, c = x.shape
        ws = window_size
        nw = -(-w // ws)
        qkv = kernels.linear(x, self.qkv)
        if h < ws or w < nw * ws:
            padded = self.qkv.bias.expand(b, ws, nw * ws, -1).clone()
            padded[:, :h, :w] = qkv
            qkv = padded
        # B ws (nw ws) 3C -> B nw ws ws 3C -> (B nw) ws ws 3C
        windows = qkv.view(b, ws, nw, ws, -1).transpose(1, 2).reshape(b * nw, ws, ws, -1)
        out = self._attend_heads(*self._split_qkv(windows), (ws, ws))
        # (B nw) ws ws C -> B ws (nw ws) C, padding cropped
        return out.view(b, nw, ws, ws, c).transpose(1, 2).reshape(b, ws, nw * ws, c)[:, :h, :w]

    def windows_whole(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Windowed attention over the whole grid in one call, before ``proj``: ``B x H x W x C``
        -> same. Pads to whole windows as the official code does (the padding's q, k, v are
        the projection's bias), attends all windows with the relative-position bias, crops."""
        b, h, w, c = x.shape
        ws = window_size
        ph, pw = -(-h // ws) * ws, -(-w // ws) * ws
        qkv = self.qkv(x)
        if (ph, pw) != (h, w):
            padded = self.qkv.bias.expand(b, ph, pw, -1).clone()
            padded[:, :h, :w] = qkv
            qkv = padded
        nh, nw = ph // ws, pw // ws
        # B (nh ws) (nw ws) 3C -> (B nh nw) ws ws 3C
        windows = qkv.view(b, nh, ws, nw, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, ws, ws, -1)
        out = self._attend_whole(*self._split_qkv(windows), (ws, ws))
        # (B nh nw) ws ws C -> B (nh ws) (nw ws) C, padding cropped
        out = out.view(b, nh, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        return out[:, :h, :w]

    def attend_whole(self, x: torch.Tensor) -> torch.Tensor:
        """Global attention in one call per image (the full ``heads x N x N`` bias), before
        ``proj``: ``B x H x W x C`` -> same."""
        q, k, v = self._qkv(x)
        return torch.cat([self._attend_whole(q[i : i + 1], k[i : i + 1], v[i : i + 1], x.shape[1:3])
                          for i in range(x.shape[0])])

    def _attend_whole(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Heads ``B x heads x N x d`` -> ``B x H x W x C``, the whole bias at once."""
        b, heads, n, d = q.shape
        rel_h, rel_w = self._rel_terms(q, hw)
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        # B heads N d -> B H W C
        return out.transpose(1, 2).reshape(b, *hw, heads * d)

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
        return self.proj(self.attend(x))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` before ``proj``."""
        return self._attend_heads(*self._qkv_heads(x), x.shape[1:3])

    def _attend_heads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]
    ) -> torch.Tensor:
        """Heads ``B x heads x N x d`` of an ``H x W`` grid -> ``B x H x W x C`` (before ``proj``)."""
        b, heads, n, d = q.shape
        h, w = hw
        rel_h, rel_w = self._rel_terms(q, (h, w))
        # Bias for `rows` query rows and `group` heads: B group rows W H W, i.e. B group
        # (rows*W) N, written into a contiguous buffer (a plain broadcast add picks a strided
        # layout that the reshape would copy again) and consumed by one attention call.
        per_head_row = b * w * n * q.element_size()
        rows = max(1, min(h, _QUERY_ROWS, _BIAS_BAND_BYTES // max(per_head_row, 1)))
        group = max(1, min(heads, _BIAS_BAND_BYTES // (rows * per_head_row)))
        band = q.new_empty(b, group, rows, w, h, w)
        out = q.new_empty(b, n, heads, d)  # B N heads d: B x H x W x C once merged
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            for h0 in range(0, heads, group):
                h1 = min(heads, h0 + group)
                bias = band[:, : h1 - h0, : r1 - r0]
                torch.add(rel_h[:, h0:h1, r0:r1, :, :, None], rel_w[:, h0:h1, r0:r1, :, None, :], out=bias)
                band_out = F.scaled_dot_product_attention(
                    q[:, h0:h1, r0 * w : r1 * w], k[:, h0:h1], v[:, h0:h1],
                    attn_mask=bias.view(b, h1 - h0, -1, n),
                )
                out[:, r0 * w : r1 * w, h0:h1] = band_out.transpose(1, 2)
        return out.view(b, h, w, heads * d)

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


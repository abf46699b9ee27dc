"""TinyViT image encoder of Light HQ-SAM (``vit_tiny``, the MobileSAM backbone).

Four stages: MBConv blocks at 256 x 256 tokens, then windowed-attention stages at
128 x 128, 64 x 64 and 64 x 64 (the last downsampling has stride 1). The early feature
SAM-HQ fuses is the output of stage 2 (after its patch merging): ``B x 64 x 64 x 160``.

Parameter names follow the official checkpoint (``Conv2d_BN`` is a ``Sequential`` of
``c`` and ``bn``; the unused classification head ``norm_head``/``head`` is kept so the
checkpoint loads with ``strict=True``). The attention bias table is gathered from the
loaded ``attention_biases`` at every call: the official module caches it at ``.eval()``
time, which goes stale when weights are loaded afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .common import LayerNorm2d, exhaust

# Bytes of the widest intermediate (an MBConv's expanded activation, an MLP's hidden layer)
# computed at once. The whole-image tensors are 34-67 MB at 1024 x 1024, above glibc's
# 32 MB mmap threshold: each was mapped and zero-filled anew on every call, which made
# ~35% of this encoder's time here (measured on 2 cores).
_BAND_BYTES = 4 * 2**20


class Conv2dBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm (inference statistics)."""

    def __init__(
        self, a: int, b: int, *, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))

    @torch.no_grad()
    def fuse_(self) -> None:
        """Fold the BatchNorm statistics into the convolution (inference only, in place).

        ``bn(c(x)) = c'(x)`` with ``W' = W * g / sqrt(var + eps)`` and
        ``b' = beta - mean * g / sqrt(var + eps)``; one pass over the activation less.
        """
        if isinstance(self.bn, nn.Identity):
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.c.weight.mul_(scale[:, None, None, None])
        self.c.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        self.bn = nn.Identity()

    def fused(
        self, x: torch.Tensor, *, act: nn.Module | None = None, padding: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``act(self(x))``, ``padding`` replacing the convolution's own; one fused call on
        CPUs once the BatchNorm is folded (``model.kernels``)."""
        if isinstance(self.bn, nn.Identity):
            return kernels.conv(x, self.c, act=act, padding=padding)
        c = self.c
        y = self.bn(F.conv2d(x, c.weight, c.bias, c.stride, c.padding if padding is None else padding,
                             c.dilation, c.groups))
        return y if act is None else act(y)

    def fused_add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``, one fused call on CPUs once the BatchNorm is folded."""
        if isinstance(self.bn, nn.Identity):
            return kernels.conv_add(x, residual, self.c)
        return residual + self(x)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: ``B x 3 x 1024 x 1024`` -> ``B x C0 x 256 x 256``."""

    def __init__(self, *, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, ks=3, stride=2, pad=1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, ks=3, stride=2, pad=1),
        )
        self.banded = True  # the compute path (build.set_compute_path): bands on CPUs, whole tensors on GPUs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` -> ``B x C0 x H/4 x W/4``, a band of output rows at a time when
        ``banded``: the middle activation (``B x C0/2 x 512 x 512``, 34 MB at 1024 x 1024)
        was the encoder's largest tensor, mapped and zero-filled anew on every call, and
        ~80 MB of the encoder's ~170 MB working set. Same numbers as the whole image."""
        conv1, act, conv2 = self.seq
        b, _, h, w = x.shape
        h1, w1 = (h + 1) // 2, (w + 1) // 2  # after conv1 (kernel 3, stride 2, padding 1)
        h2 = (h1 + 1) // 2
        mid_row = b * conv1.c.out_channels * w1 * x.element_size()
        rows = max(1, (_BAND_BYTES // mid_row - 1) // 2)  # output rows per band
        if rows >= h2 or not self.banded:
            return self.seq(x)

        def band(r0: int, r1: int) -> torch.Tensor:
            # output row j reads middle rows 2j-1 .. 2j+1, middle row i reads input rows 2i-1 .. 2i+1
            m0, m1 = max(0, 2 * r0 - 1), min(h1, 2 * r1)
            mid = _conv_rows(conv1, x, 2 * m0 - 1, 2 * m1, act=act)
            return _conv_rows(conv2, mid, 2 * r0 - 1 - m0, 2 * r1 - m0)

        return _row_bands(band, h2, rows)


def _format_of(x: torch.Tensor) -> torch.memory_format:
    """``x``'s memory format: channels-last or contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _row_bands(band: Callable[[int, int], torch.Tensor], h: int, rows: int) -> torch.Tensor:
    """``B x C x h x W`` (channels-last) filled ``rows`` output rows at a time by
    ``band(r0, r1)``, which returns rows ``r0`` to ``r1`` (exclusive)."""
    out = None
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        part = band(r0, r1)
        if out is None:
            # (made channels-last directly: .contiguous() of a fresh tensor copied its 16 MB)
            out = torch.empty((part.shape[0], part.shape[1], h, part.shape[3]), dtype=part.dtype,
                              device=part.device, memory_format=torch.channels_last)
        out[:, :, r0:r1] = part
    return out


def _conv_rows(
    cbn: Conv2dBN, x: torch.Tensor, lo: int, hi: int, *, act: nn.Module | None = None
) -> torch.Tensor:
    """``act(cbn(...))`` (3 x 3, padding 1, any stride and groups) for the output rows whose
    input rows run from ``lo`` to ``hi`` (exclusive, in ``x``'s rows; -1 and ``H`` are the
    zero padding): ``(hi - lo - 3) // stride + 1`` rows."""
    h = x.shape[2]
    top, bottom = max(0, -lo), max(0, hi - h)
    x = x[:, :, max(0, lo) : min(h, hi)]
    if top or bottom:
        x = F.pad(x, (0, 0, top, bottom)).contiguous(memory_format=torch.channels_last)
    return cbn.fused(x, act=act, padding=(0, cbn.c.padding[1]))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project; ``B x C x H x W``."""

    def __init__(self, *, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, ks=3, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, chans)
        self.act3 = nn.GELU()
        self.banded = True  # the compute path (build.set_compute_path): bands on CPUs, whole tensors on GPUs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` -> same, a band of rows at a time (see ``_BAND_BYTES``) when
        ``banded``, else at once.

        Each band reads one extra row on each side (the depthwise 3 x 3 convolution's
        reach) and keeps only its own rows, so the result equals the whole-image one.
        """
        b, c, h, w = x.shape
        hidden = self.conv1.c.out_channels
        rows = max(1, _BAND_BYTES // (b * hidden * w * x.element_size()))
        if rows >= h or not self.banded:
            return self._block(x)
        out = torch.empty_like(x)  # keeps channels-last memory
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            lo, hi = max(0, r0 - 1), min(h, r1 + 1)
            out[:, :, r0:r1] = self._block(x[:, :, lo:hi])[:, :, r0 - lo : r1 - lo]
        return out

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2.fused(self.conv1.fused(x, act=self.act1), act=self.act2)
        # the residual in the convolution's own memory format (channels-last here)
        y = self.conv3.fused_add(y, x.contiguous(memory_format=_format_of(x)))
        return torch.ops.aten.gelu_(y, approximate=self.act3.approximate)


class PatchMerging(nn.Module):
    """1x1, depthwise 3x3 (stride 1 or 2), 1x1; returns tokens ``B x N x C_out``."""

    def __init__(
        self, *, input_resolution: tuple[int, int], dim: int, out_dim: int, stride: int
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, ks=3, stride=stride, pad=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)
        self.banded = True  # the compute path (build.set_compute_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` or tokens ``B x N x C`` -> tokens ``B x N' x C_out``; a band of
        output rows at a time when ``banded`` (the expanded activation before the depthwise
        convolution is 34 MB at stage 0, twice with its GELU); same numbers."""
        if x.ndim == 3:
            h, w = self.input_resolution
            # B N C -> B C H W
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        b, _, h, w = x.shape
        stride = self.conv2.c.stride[0]
        h2 = (h - 1) // stride + 1  # kernel 3, padding 1
        mid_row = b * self.conv1.c.out_channels * w * x.element_size()
        rows = max(1, (_BAND_BYTES // mid_row - 2) // stride)
        if rows >= h2 or not self.banded:
            x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        else:
            def band(r0: int, r1: int) -> torch.Tensor:
                lo, hi = stride * r0 - 1, stride * (r1 - 1) + 2  # input rows; -1 and H: padding
                mid = self.conv1.fused(x[:, :, max(0, lo) : min(h, hi)], act=self.act)
                return self.conv3.fused(_conv_rows(self.conv2, mid, lo - max(0, lo), hi - max(0, lo), act=self.act))

            x = _row_bands(band, h2, rows)
        # B C H W -> B H W C -> B N C (no copy when x is channels-last)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on ``B x C x H x W`` then patch merging to tokens."""

    def __init__(
        self,
        *,
        dim: int,
        out_dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        expand_ratio: float,
        merge_stride: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MBConv(chans=dim, expand_ratio=expand_ratio) for _ in range(depth)
        )
        self.downsample = PatchMerging(
            input_resolution=input_resolution, dim=dim, out_dim=out_dim, stride=merge_stride
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class Mlp(nn.Module):
    """Pre-norm feed-forward: ``fc2(gelu(fc1(norm(x))))``."""

    def __init__(self, *, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(kernels.linear(self.norm(x), self.fc1, act=self.act), self.fc2)

    def add_to(self, x: torch.Tensor) -> torch.Tensor:
        """``x + self(x)``, the residual added inside the last product on CPUs."""
        return kernels.linear_add(kernels.linear(self.norm(x), self.fc1, act=self.act), x, self.fc2)


def _offset_indices(resolution: int, device: torch.device | None = None) -> torch.Tensor:
    """``N x N`` index of the |offset| between every two cells of a window (N = resolution^2),
    numbered in order of first appearance, as the official table.

    The official table scans cell pairs row-major; the first cell, (0, 0), meets every
    |offset| (dy, dx) already, in row-major order, so the number is ``dy * resolution + dx``.
    """
    real = device if device is not None and device.type != "meta" else torch.device("cpu")
    return torch.tensor(_offset_table(resolution), dtype=torch.int64, device=real).view(resolution**2, -1)


@lru_cache(maxsize=8)
def _offset_table(resolution: int) -> tuple[int, ...]:
    """``_offset_indices`` as a flat tuple, made once per resolution (the scan took 0.25 s of
    every vit_tiny load, 12 ms for each of its 20 attention blocks). Plain Python: the model
    is built under a meta-device mode, where torch ops would make meta tensors."""
    n, r = resolution * resolution, resolution
    return tuple(abs(a // r - b // r) * r + abs(a % r - b % r) for a in range(n) for b in range(n))


class Attention(nn.Module):
    """Pre-norm window attention with a learned bias per head and |offset| (LeViT style)."""

    def __init__(self, *, dim: int, key_dim: int, num_heads: int, resolution: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * key_dim * num_heads)
        self.proj = nn.Linear(key_dim * num_heads, dim)
        self.resolution = resolution
        offsets = _offset_indices(resolution)
        # One bias per head and distinct |offset| (|dy|, |dx|): resolution^2 of them.
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", offsets, persistent=False)
        self.banded = True  # CPUs: written-out attention, a chunk of windows at a time; GPUs: one fused call

    def init_buffers(self) -> None:
        """(Re)compute the offset index table, which checkpoints do not hold."""
        self.attention_bias_idxs = _offset_indices(self.resolution, device=self.attention_biases.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x N x C`` (B windows of N = window area tokens) -> same.

        Windows are taken ``_BAND_BYTES`` of q/k/v at a time. The attention is written out
        (scores, softmax, weighted sum): on these many tiny problems (up to 361 windows x 4
        heads of 49 x 49, head width 32) that ran 1.7x faster than
        ``scaled_dot_product_attention`` with the bias as a mask (measured on 2 cores).
        """
        b, n, c = x.shape
        bias = self.attention_biases[:, self.attention_bias_idxs].to(x.dtype)  # heads x N x N
        if not self.banded:  # every window in one fused attention call
            qkv = self.qkv(self.norm(x))
            q, k, v = (t.transpose(1, 2) for t in qkv.view(b, n, self.num_heads, -1).split([self.key_dim] * 3, dim=3))
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(b, -1, -1, -1))
            return self.proj(attn.transpose(1, 2).reshape(b, n, -1))
        out = x.new_empty(b, n, self.proj.out_features)
        chunk = max(1, _BAND_BYTES // (n * self.qkv.out_features * x.element_size()))
        for w0 in range(0, b, chunk):
            w1 = min(b, w0 + chunk)
            qkv = kernels.linear(self.norm(x[w0:w1]), self.qkv)
            # b N (heads 3d) -> b N heads 3d -> split -> b heads N d
            q, k, v = (
                t.transpose(1, 2)
                for t in qkv.view(w1 - w0, n, self.num_heads, -1).split([self.key_dim] * 3, dim=3)
            )
            scores = torch.matmul(q * self.key_dim**-0.5, k.transpose(-2, -1)) + bias
            attn = torch.matmul(scores.softmax(dim=-1), v)
            out[w0:w1] = kernels.linear(attn.transpose(1, 2).reshape(w1 - w0, n, -1), self.proj)
        return out


class TinyViTBlock(nn.Module):
    """Window attention (zero-padded windows), depthwise local conv, MLP; tokens ``B x N x C``."""

    def __init__(
        self,
        *,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(
            dim=dim, key_dim=dim // num_heads, num_heads=num_heads, resolution=window_size
        )
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, ks=3, pad=1, groups=dim)
        self.banded = True  # the MLP a band of tokens at a time (CPUs) or at once (GPUs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            attn = self.attn(x)
        else:
            y = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            # B Hp Wp C -> (B nh nw) (ws ws) C
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = self.attn(y)
            # (B nh nw) (ws ws) C -> B Hp Wp C -> B N C
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            attn = y[:, :h, :w].reshape(b, n, c)
        x = x + attn
        # B N C -> B H W C -> B C H W, a channels-last view; the depthwise convolution keeps
        # that layout, so its output is tokens again without a copy either way
        x = self.local_conv.fused(x.view(b, h, w, c).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).reshape(b, n, c)  # B C H W -> B H W C -> B N C
        if not self.banded:
            return x + self.mlp(x)
        # x + mlp(x), a band of tokens at a time (its hidden layer is 4x wider than x)
        out = torch.empty(b, n, c, dtype=x.dtype, device=x.device)
        rows = max(1, _BAND_BYTES // (self.mlp.fc1.out_features * x.element_size()))
        for i in range(b):
            for r0 in range(0, n, rows):
                out[i, r0 : r0 + rows] = self.mlp.add_to(x[i, r0 : r0 + rows])
        return out


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then (except the last stage) patch merging."""

    def __init__(
        self,
        *,
        dim: int,
        out_dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        merge_stride: int | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(
                dim=dim,
                input_resolution=input_resolution,
                num_heads=num_heads,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
            )
            for _ in range(depth)
        )
        self.downsample = (
            None
            if merge_stride is None
            else PatchMerging(
                input_resolution=input_resolution, dim=dim, out_dim=out_dim, stride=merge_stride
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """Returns ``(image_embedding B x 256 x 64 x 64, early_feature B x 64 x 64 x C2)``."""

    def __init__(
        self,
        *,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        num_classes: int = 1000,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        if len(embed_dims) != 4:
            raise ValueError("TinyViT has exactly four stages")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans=in_chans, embed_dim=embed_dims[0])
        res0 = img_size // 4
        # Token grid side per stage; the last merging keeps the resolution (stride 1).
        sides = (res0, res0 // 2, res0 // 4, res0 // 4)
        self.embedding_side = sides[3]
        self.layers = nn.ModuleList()
        for i in range(4):
            merge_stride = None if i == 3 else (1 if i == 2 else 2)
            out_dim = embed_dims[min(i + 1, 3)]
            if i == 0:
                layer: nn.Module = ConvLayer(
                    dim=embed_dims[0],
                    out_dim=out_dim,
                    input_resolution=(sides[0], sides[0]),
                    depth=depths[0],
                    expand_ratio=mbconv_expand_ratio,
                    merge_stride=2,
                )
            else:
                layer = BasicLayer(
                    dim=embed_dims[i],
                    out_dim=out_dim,
                    input_resolution=(sides[i], sides[i]),
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_sizes[i],
                    mlp_ratio=mlp_ratio,
                    merge_stride=merge_stride,
                )
            self.layers.append(layer)
        # Classification head of the ImageNet pretraining: unused, present in the checkpoints.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def fuse_batchnorm_(self) -> None:
        """Fold every BatchNorm into its convolution (inference only; state-dict keys change)."""
        for module in self.modules():
            if isinstance(module, Conv2dBN):
                module.fuse_()

    @property
    def num_steps(self) -> int:
        """Steps ``iter_forward`` yields: one per stage."""
        return len(self.layers)

    def iter_forward(self, x: torch.Tensor) -> Generator[int, None, tuple[torch.Tensor, torch.Tensor]]:
        """``forward`` one stage at a time: yields the number of stages done, returns the outputs."""
        side = self.embedding_side
        # The convolutional stage runs on channels-last memory: measured ~1.3x faster here.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        early = x
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == 1:
                early = x.view(x.shape[0], side, side, -1)  # B N C -> B H W C
            yield i + 1
        # B N C -> B H W C -> B C H W
        x = x.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2)
        return self.neck(x), early

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x 3 x 1024 x 1024`` -> (``B x 256 x 64 x 64``, ``B x 64 x 64 x C2``)."""
        return exhaust(self.iter_forward(x))

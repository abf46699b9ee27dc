"""HQ mask decoder: SAM's decoder plus the HQ output token and the HQ feature fusion.

Shapes: image embedding ``1 x 256 x 64 x 64``; early ViT feature ``1 x 64 x 64 x Cv``;
``B`` prompts; low-resolution mask logits ``B x M x 256 x 256``.

Split for speed, with the same arithmetic as the official module:

- ``hq_features`` (``embedding_encoder`` + ``compress_vit_feat``, ~8.3 GFLOP for ViT-B)
  does not depend on the prompt: the engine computes it once per image.
- The HQ mask is ``h . (conv3(y) + hq_features)`` with ``h`` the 32-vector of
  ``hf_mlp`` and ``y`` the activation before ``embedding_maskfeature``'s last 3x3
  convolution. Everything after ``y`` is linear, so ``h`` is folded into that
  convolution's weights: one output channel per prompt instead of 32.
- The mask heads run on pixel rows (``B x HW x C``, the transformer's layout), one prompt
  at a time: the 2 x 2 transposed convolutions are matrix products plus a block shuffle,
  and only the SAM masks the output uses are computed.

``fused=False`` keeps the official order of operations; tests check that both agree.

Outputs (decided semantics):

- ``multimask_output=False``: one mask, SAM token 0 + HQ token, score = IoU of token 0.
- ``multimask_output=True``: three candidates (SAM tokens 1-3, each + HQ), sorted by
  score, best first; the best is what the official code returns.
- ``hq_token_only=True``: the HQ logits alone, one mask; its score is the IoU of the
  token the official code would select (token 0, or the best of 1-3 with multimask).

Windows (``forward(..., windows=)``): when the caller knows where each object lies (a box
from an instance head), the mask heads, most of a prompt's cost on a CPU (~30 ms of the
~45 ms for vit_tiny), run only there. A window is a rectangle of the 64 x 64 embedding
grid; inside it (4 x 4 low-res pixels per cell) the logits are those of the full
computation (the heads run on the window and one cell around it, more than the two 3 x 3
convolutions reach); outside they are ``OUTSIDE_LOGIT``. Scores do not change: they come
from the transformer's tokens.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .common import LayerNorm2d
from .transformer import ImageTokens, TwoWayTransformer

# Low-res logit outside a prompt's window: certain background, in the range of SAM's own
# background logits (so an answer fed back as a mask prompt stays in range).
OUTSIDE_LOGIT = -50.0


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: ``... x in`` -> ``... x out``."""

    def __init__(self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _upscale_2x2(in_dim: int, mid_dim: int, out_dim: int) -> nn.Sequential:
    """Two stride-2 transposed convolutions (x4 in size) with LayerNorm2d + GELU between."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_dim, mid_dim, kernel_size=2, stride=2),
        LayerNorm2d(mid_dim),
        nn.GELU(),
        nn.ConvTranspose2d(mid_dim, out_dim, kernel_size=2, stride=2),
    )


class MaskDecoderHQ(nn.Module):
    def __init__(
        self,
        *,
        transformer: TwoWayTransformer,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        vit_dim: int = 768,
    ) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer = transformer
        self.num_sam_tokens = num_multimask_outputs + 1
        self.banded = True  # mask heads one prompt at a time (CPUs) or the batch at once (GPUs)
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_sam_tokens, c)
        self.output_upscaling = nn.Sequential(*_upscale_2x2(c, c // 4, c // 8), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(input_dim=c, hidden_dim=c, output_dim=c // 8, num_layers=3)
            for _ in range(self.num_sam_tokens)
        )
        self.iou_prediction_head = MLP(
            input_dim=c,
            hidden_dim=iou_head_hidden_dim,
            output_dim=self.num_sam_tokens,
            num_layers=iou_head_depth,
        )
        # HQ-SAM: output token, its hypernetwork, and the three fusion branches.
        self.hf_token = nn.Embedding(1, c)
        self.hf_mlp = MLP(input_dim=c, hidden_dim=c, output_dim=c // 8, num_layers=3)
        self.compress_vit_feat = _upscale_2x2(vit_dim, c, c // 8)
        self.embedding_encoder = _upscale_2x2(c, c // 4, c // 8)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(c // 8, c // 4, 3, 1, 1),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.Conv2d(c // 4, c // 8, 3, 1, 1),
        )

    def hq_features(self, image_embeddings: torch.Tensor, early_features: torch.Tensor) -> torch.Tensor:
        """Prompt-independent HQ features: ``B x 256 x 64 x 64``, ``B x 64 x 64 x Cv`` -> ``B x 32 x 256 x 256``.

        On CPUs (``banded``) both branches run on pixel rows, their transposed convolutions
        as matrix products (``upscale_2x2_blocks``): 20 vs 55 ms for vit_tiny here, where
        ``ConvTranspose2d`` ran at a third of the machine's matrix-product speed.
        """
        b, _, h, w = image_embeddings.shape
        if self.banded:
            emb_rows = image_embeddings.permute(0, 2, 3, 1).reshape(b, h * w, -1)  # B C h w -> B h w C -> B hw C
            vit_rows = early_features.reshape(b, h * w, -1)  # B h w Cv -> B hw Cv
            blocks = upscale_2x2_blocks(self.embedding_encoder, emb_rows)
            blocks += upscale_2x2_blocks(self.compress_vit_feat, vit_rows)
            return blocks_to_planes(blocks, (h, w))
        # B H W C -> B C H W
        vit = early_features.permute(0, 3, 1, 2)
        hq = self.embedding_encoder(image_embeddings) + self.compress_vit_feat(vit)
        # Contiguous (the convolutions may leave channels-last memory): every prompt reads
        # it as 32 x HW planes, and a strided copy there cost 3-4 ms per prompt.
        return hq.contiguous()

    def prepare_image(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_prompt_embeddings: torch.Tensor
    ) -> ImageTokens:
        """The transformer's image side for ``image_embeddings + dense_prompt_embeddings``.

        Without a mask prompt the dense embedding is a constant, so this can be computed once
        per image and passed to every ``predict_masks`` call as ``image_tokens``.
        """
        return self.transformer.prepare_image(image_embeddings, image_pe, dense_prompt_embeddings)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        hq_features: torch.Tensor,
        *,
        fused: bool = True,
        image_tokens: ImageTokens | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All heads: SAM logits ``B x 4 x 256 x 256``, HQ logits ``B x 1 x 256 x 256``, IoU ``B x 4``.

        ``image_embeddings``, ``image_pe`` and ``hq_features`` have batch 1 and serve all
        ``B`` prompts; ``dense_prompt_embeddings`` has batch 1 or ``B``. ``image_tokens``,
        from ``prepare_image`` with the same embedding and dense prompt, skips that work.
        """
        hs, src, iou = self._run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_tokens
        )
        sam_logits, hq_logits = self._logits(hs, src, hq_features, image_embeddings.shape[-2:], fused=fused)
        return sam_logits, hq_logits, iou

    def _run_transformer(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                         image_tokens):
        """Output tokens ``B x T x C``, image tokens ``1 or B x hw x C`` and IoU ``B x 4``."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat(
            [self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight], dim=0
        )
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1
        )
        # Batch 1 when there is no mask prompt: the transformer shares it across prompts.
        if image_tokens is None:
            image_tokens = self.prepare_image(image_embeddings, image_pe, dense_prompt_embeddings)
        hs, src = self.transformer.forward_prepared(image_tokens, tokens)
        return hs, src, self.iou_prediction_head(hs[:, 0])

    def _logits(
        self, hs, src, hq_features, hw, *, fused: bool, sam_tokens: tuple[int, ...] = (0, 1, 2, 3)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM logits ``B x len(sam_tokens) x 256 x 256`` (those SAM output tokens, in that
        order) and HQ logits ``B x 1 x 256 x 256`` from the transformer's output tokens
        ``hs`` and image tokens ``src`` (``B x hw x C``).

        ``fused=True`` runs the mask heads on pixel rows (``B x HW x C``, the transformer's
        own layout): the 2 x 2 transposed convolutions are matrix products, nothing is
        transposed between blocks, and the HQ head is folded (``_hq_logits_fused``).
        ``fused=False`` applies the modules as the official code does, for tests.
        """
        b = hs.shape[0]
        h, w = hw
        src = src.expand(b, -1, -1)
        mask_tokens_out = hs[:, 1 : 2 + self.num_sam_tokens]  # SAM tokens, then the HQ token
        mlps = self.output_hypernetworks_mlps
        if sam_tokens:
            hyper_sam = torch.stack([mlps[i](mask_tokens_out[:, i]) for i in sam_tokens], dim=1)
        else:
            hyper_sam = hs.new_zeros(b, 0, mlps[0].layers[-1].out_features)
        # hyper_sam: B x len(sam_tokens) x 32
        hyper_hq = self.hf_mlp(mask_tokens_out[:, self.num_sam_tokens])  # B x 32
        if not fused:
            # B hw C -> B C h w
            upscaled = self.output_upscaling(src.transpose(1, 2).unflatten(2, (h, w)))
            uh, uw = upscaled.shape[-2:]
            sam_logits = (hyper_sam @ upscaled.flatten(2)).view(b, len(sam_tokens), uh, uw)
            hq_embedding = self.embedding_maskfeature(upscaled) + hq_features
            hq_logits = (hyper_hq[:, None] @ hq_embedding.flatten(2)).view(b, 1, uh, uw)
            return sam_logits, hq_logits

        if not self.banded:  # GPUs: the whole batch of prompts per kernel
            rows, (uh, uw) = self.upscale_rows(src, (h, w))  # B x HW x 32
            sam_logits = (hyper_sam @ rows.transpose(1, 2)).view(b, len(sam_tokens), uh, uw)
            return sam_logits, self._hq_logits_fused(rows, (uh, uw), hyper_hq, hq_features)
        # CPUs, one prompt at a time: per prompt, the heads' activations at 256 x 256 take
        # 8-17 MB each; for a batch they crossed glibc's 32 MB mmap threshold and every
        # call paid fresh zero-filled pages (50 boxes: 0.8 M page faults, 35% slower).
        sam_logits, hq_logits = [], []
        for i in range(b):
            rows, (uh, uw) = self.upscale_rows(src[i : i + 1], (h, w))  # 1 x HW x 32
            # (1 4 32) @ (1 32 HW): one contiguous plane per mask
            sam_logits.append((hyper_sam[i : i + 1] @ rows.transpose(1, 2)).view(1, len(sam_tokens), uh, uw))
            hq_logits.append(self._hq_logits_fused(rows, (uh, uw), hyper_hq[i : i + 1], hq_features))
        return torch.cat(sam_logits), torch.cat(hq_logits)

    def upscale_rows(self, src: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``output_upscaling`` on pixel rows: ``B x hw x C`` -> ``B x 16hw x C/8`` and its grid.

        Same arithmetic as the module on ``B x C x h x w``; rows are row-major pixels.
        """
        return blocks_to_rows(upscale_2x2_blocks(self.output_upscaling, src), hw), (4 * hw[0], 4 * hw[1])

    def _hq_logits_fused(
        self, rows: torch.Tensor, hw: tuple[int, int], hyper_hq: torch.Tensor, hq_features: torch.Tensor
    ) -> torch.Tensor:
        """``h . (conv3(y) + hq)`` with ``h`` folded into ``conv3``: ``B x 1 x 256 x 256``.

        ``rows`` is the upscaled activation as pixel rows ``B x HW x 32``. The folded kernel
        has one output channel, which convolution libraries run slowly; it is computed as
        one matrix product onto the 9 taps (``B x 9 x HW``) and a sum of the 9 shifted tap
        planes (zero padding 1, as ``conv3``).
        """
        b = rows.shape[0]
        uh, uw = hw
        conv1, norm, act, conv3 = self.embedding_maskfeature
        k = conv3.kernel_size[0]
        # Per prompt, a 64 -> 1 kernel: sum_o h[o] * W3[o], as B x (k*k) x 64 taps.
        taps = torch.einsum("bo,oikl->bikl", hyper_hq, conv3.weight).flatten(2).transpose(1, 2)
        # B HW C -> B C H W as a channels-last view; with a channels-last kernel the
        # convolution keeps that layout, so its output is pixel rows again (no copy).
        x = rows.view(b, uh, uw, -1).permute(0, 3, 1, 2)
        weight = conv1.weight.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, weight, conv1.bias, padding=conv1.padding)
        y = y.permute(0, 2, 3, 1).reshape(b, uh * uw, -1)  # B x HW x 64
        y = _gelu_(F.layer_norm(y, (y.shape[-1],), norm.weight, norm.bias, norm.eps), act)
        # (B k*k C) @ (B C HW): one contiguous plane per tap, B x k*k x H x W
        z = (taps @ y.transpose(1, 2)).view(b, k * k, uh, uw)
        # Output pixel (i, j) takes tap (ky, kx) at (i + ky - pad, j + kx - pad) where that
        # lies inside: the zero padding of conv3, without building a padded copy.
        pad = k // 2
        logits = z[:, pad * k + pad].clone()
        for t in range(k * k):
            dy, dx = divmod(t, k)
            dy, dx = dy - pad, dx - pad
            if dy == 0 and dx == 0:
                continue
            logits[:, max(0, -dy) : uh - max(0, dy), max(0, -dx) : uw - max(0, dx)] += z[
                :, t, max(0, dy) : uh + min(0, dy), max(0, dx) : uw + min(0, dx)
            ]
        # + h . b3 + h . hq_features (1 x 32 x 256 x 256 -> 32 x HW, shared by all prompts)
        logits = logits.view(b, uh * uw) + (hyper_hq @ conv3.bias)[:, None]
        logits = logits + hyper_hq @ hq_features.flatten(1).view(-1, uh * uw)
        return logits.view(b, 1, uh, uw)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        hq_features: torch.Tensor,
        *,
        multimask_output: bool,
        hq_token_only: bool,
        fused: bool = True,
        image_tokens: ImageTokens | None = None,
        windows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final logits ``B x M x 256 x 256`` and scores ``B x M`` (module docstring).

        ``windows``: ``B x 4`` integer (row0, row1, col0, col1), half-open, in the
        embedding grid: each prompt's masks are computed there only (module docstring).
        """
        hs, src, iou = self._run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_tokens
        )
        return self._outputs(
            hs, src, iou, hq_features, image_embeddings.shape[-2:],
            multimask_output=multimask_output, hq_token_only=hq_token_only, fused=fused, windows=windows,
        )

    def _outputs(self, hs, src, iou, hq_features, hw, *, multimask_output: bool, hq_token_only: bool, fused: bool,
                 windows: torch.Tensor | None = None):
        """Final logits and scores from the transformer's outputs, computing only the SAM
        masks the selection can return (``_needed_tokens``), only inside ``windows``."""
        tokens = _needed_tokens(multimask_output, hq_token_only)
        if windows is None:
            sam, hq = self._logits(hs, src, hq_features, hw, fused=fused, sam_tokens=tokens)
        else:
            windows = _check_windows(windows, hs.shape[0], hw)
            if fused and self.banded:
                sam, hq = self._window_logits(hs, src, hq_features, hw, windows, sam_tokens=tokens)
            else:  # the whole plane (one kernel for the batch), then the windows cut out
                sam, hq = self._logits(hs, src, hq_features, hw, fused=fused, sam_tokens=tokens)
        logits, scores = _select(sam, hq, iou, multimask_output=multimask_output, hq_token_only=hq_token_only)
        if windows is not None:
            inside = _window_masks(windows, logits.shape[-2:], hw).to(logits.device)
            logits = logits.masked_fill(~inside, OUTSIDE_LOGIT)
        return logits, scores

    def _window_logits(self, hs, src, hq_features, hw, windows: torch.Tensor, *, sam_tokens: tuple[int, ...]):
        """``_logits`` computed per prompt on its window and one embedding cell around it
        (zero elsewhere; ``_outputs`` fills that): ``B x len(sam_tokens) x 256 x 256`` and
        ``B x 1 x 256 x 256``. The halo makes the window exact: the 3 x 3 convolutions of
        the HQ head see 2 low-res pixels past a pixel, a cell is 4; at the plane's own
        border the zero padding is the module's."""
        b = hs.shape[0]
        h, w = hw
        c = src.shape[-1]
        src = src.expand(b, -1, -1)
        mask_tokens_out = hs[:, 1 : 2 + self.num_sam_tokens]
        mlps = self.output_hypernetworks_mlps
        sam = hs.new_zeros(b, len(sam_tokens), 4 * h, 4 * w)
        hq = hs.new_zeros(b, 1, 4 * h, 4 * w)
        for i, (r0, r1, c0, c1) in enumerate(windows.tolist()):
            if r0 >= r1 or c0 >= c1:
                continue
            a0, a1, b0, b1 = max(0, r0 - 1), min(h, r1 + 1), max(0, c0 - 1), min(w, c1 + 1)
            # 1 x hw x C -> the cells a0:a1 x b0:b1 as rows, row-major
            rows_in = src[i].view(h, w, c)[a0:a1, b0:b1].reshape(1, -1, c)
            rows, (uh, uw) = self.upscale_rows(rows_in, (a1 - a0, b1 - b0))  # 1 x 16hw x 32
            tokens_out = mask_tokens_out[i : i + 1]
            hyper_hq = self.hf_mlp(tokens_out[:, self.num_sam_tokens])  # 1 x 32
            feats = hq_features[:, :, 4 * a0 : 4 * a1, 4 * b0 : 4 * b1]
            crop_hq = self._hq_logits_fused(rows, (uh, uw), hyper_hq, feats)
            # the window inside the computed crop (low-res pixels)
            y0, y1, x0, x1 = 4 * (r0 - a0), 4 * (r1 - a0), 4 * (c0 - b0), 4 * (c1 - b0)
            out = (slice(4 * r0, 4 * r1), slice(4 * c0, 4 * c1))
            hq[i, :, out[0], out[1]] = crop_hq[0, :, y0:y1, x0:x1]
            if sam_tokens:
                hyper_sam = torch.stack([mlps[t](tokens_out[:, t]) for t in sam_tokens], dim=1)  # 1 x M x 32
                crop_sam = (hyper_sam @ rows.transpose(1, 2)).view(len(sam_tokens), uh, uw)
                sam[i, :, out[0], out[1]] = crop_sam[:, y0:y1, x0:x1]
        return sam, hq

    def forward_filtered(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        hq_features: torch.Tensor,
        *,
        multimask_output: bool,
        hq_token_only: bool,
        min_score: float,
        image_tokens: ImageTokens | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` for the prompts whose best score exceeds ``min_score`` only.

        The scores come from the transformer alone, so the mask heads (upscaling, HQ
        features at 256 x 256: most of a prompt's cost) run only for the prompts kept.
        Returns their logits ``K x M x 256 x 256``, scores ``K x M`` and indices ``K``; the
        same values ``forward`` gives those prompts.
        """
        hs, src, iou = self._run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_tokens
        )
        best = iou[:, 1:].max(dim=1).values if multimask_output else iou[:, 0]
        keep = torch.nonzero(best > min_score).flatten()
        if keep.numel() == 0:
            m = 3 if multimask_output and not hq_token_only else 1
            size = 4 * image_embeddings.shape[-2]  # low-res logits: 4x the embedding grid
            return iou.new_zeros(0, m, size, size), iou.new_zeros(0, m), keep
        hs, iou = hs[keep], iou[keep]
        src = src if src.shape[0] == 1 else src[keep]
        logits, scores = self._outputs(
            hs, src, iou, hq_features, image_embeddings.shape[-2:],
            multimask_output=multimask_output, hq_token_only=hq_token_only, fused=True,
        )
        return logits, scores, keep


def _gelu_(x: torch.Tensor, act: nn.GELU) -> torch.Tensor:
    """``act(x)`` written into ``x`` (a fresh intermediate): one 8-17 MB buffer fewer per
    call in the heads, which is a page-faulting allocation whenever the heap has just been
    trimmed."""
    return torch.ops.aten.gelu_(x, approximate=act.approximate)


def upscale_2x2_blocks(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A ``_upscale_2x2`` block (optionally followed by a GELU, as ``output_upscaling``) on
    pixel rows: ``B x hw x Cin`` -> ``B x 16hw x Cout`` in block order (``blocks_to_rows``).

    A kernel-2, stride-2 transposed convolution writes a 2 x 2 block per input pixel (no
    overlap): one matrix product ``Cin -> (2 x 2 x Cout)``. Everything between the two
    convolutions works per pixel, so the blocks are never moved into place in between:
    output pixel ``(4i + 2a + c, 4j + 2b + d)`` is row ``(i, j, a, b, c, d)``. Same
    arithmetic as the modules on ``B x C x h x w``.
    """
    conv1, norm, act1, conv2, *act2 = seq
    b = x.shape[0]
    x = _conv_transpose_2x2_matmul(x, conv1).view(b, -1, conv1.out_channels)  # B (h w a b) C1
    x = _gelu_(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps), act1)
    x = _conv_transpose_2x2_matmul(x, conv2, act=act2[0] if act2 else None)  # B (h w a b) (c d C2)
    return x.view(b, -1, conv2.out_channels)


def _conv_transpose_2x2_matmul(x: torch.Tensor, conv: nn.ConvTranspose2d, *, act: nn.Module | None = None):
    """``B x N x Cin`` -> ``B x N x (2 x 2 x Cout)``: each row's 2 x 2 output block, then ``act``."""
    if conv.kernel_size != (2, 2) or conv.stride != (2, 2) or conv.padding != (0, 0) or conv.groups != 1:
        raise ValueError("the pixel-row upscaling needs kernel 2, stride 2, no padding, one group")
    cin, cout = conv.weight.shape[:2]
    # Cin Cout kh kw -> kh kw Cout Cin -> (kh kw Cout) Cin
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)
    return kernels.matmul(x, weight, conv.bias.repeat(4), act=act)


def blocks_to_rows(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``upscale_2x2_blocks``' output as row-major pixel rows ``B x (4h 4w) x C`` (one copy)."""
    b, h, w, c = x.shape[0], *hw, x.shape[-1]
    # B (h w a b c d) C -> B h a c w b d C -> B (4h 4w) C
    return x.view(b, h, w, 2, 2, 2, 2, c).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, 16 * h * w, c)


def blocks_to_planes(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``upscale_2x2_blocks``' output as contiguous planes ``B x C x 4h x 4w``.

    Through row-major rows: one permutation straight to planes reads every element with a
    stride (60 vs ~10 ms for 32 x 256 x 256 here).
    """
    b, h, w = x.shape[0], *hw
    # B (4h 4w) C -> B C (4h 4w) -> B C 4h 4w
    return blocks_to_rows(x, hw).transpose(1, 2).contiguous().view(b, -1, 4 * h, 4 * w)


def _check_windows(windows: torch.Tensor, b: int, hw: tuple[int, int]) -> torch.Tensor:
    """``B x 4`` (row0, row1, col0, col1) cells, clipped to the ``h x w`` grid."""
    windows = torch.as_tensor(windows, dtype=torch.int64)
    if windows.shape != (b, 4):
        raise ValueError(f"windows must be B x 4 (row0, row1, col0, col1) with B = {b}, got {tuple(windows.shape)}")
    h, w = hw
    limit = torch.tensor([h, h, w, w])
    return torch.minimum(windows.cpu().clamp(min=0), limit)


def _window_masks(windows: torch.Tensor, size: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """``B x 1 x H x W`` bool, True inside each prompt's window (cells of ``size / hw`` pixels)."""
    fy, fx = size[0] // hw[0], size[1] // hw[1]
    ys = torch.arange(size[0]) // fy
    xs = torch.arange(size[1]) // fx
    r0, r1, c0, c1 = (windows[:, k, None] for k in range(4))
    rows = (ys >= r0) & (ys < r1)  # B x H
    cols = (xs >= c0) & (xs < c1)  # B x W
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _needed_tokens(multimask_output: bool, hq_token_only: bool) -> tuple[int, ...]:
    """The SAM output tokens whose masks ``_select`` uses."""
    if hq_token_only:
        return ()
    return (1, 2, 3) if multimask_output else (0,)


def _select(sam: torch.Tensor, hq: torch.Tensor, iou: torch.Tensor, *, multimask_output: bool, hq_token_only: bool):
    """Final logits and scores (module docstring) from the SAM masks of
    ``_needed_tokens(multimask_output, hq_token_only)``, the HQ mask and all IoU scores."""
    if multimask_output:
        scores, order = iou[:, 1:].sort(dim=1, descending=True, stable=True)
        if hq_token_only:
            return hq, scores[:, :1]
        index = order[:, :, None, None].expand(-1, -1, *sam.shape[-2:])
        return sam.gather(1, index) + hq, scores
    if hq_token_only:
        return hq, iou[:, :1]
    return sam + hq, iou[:, :1]

"""Two-way transformer of the SAM mask decoder.

Tokens (output tokens + prompt embeddings, ``B x T x 256``) and image tokens
(``B x 4096 x 256``, the 64 x 64 grid flattened row-major) attend to each other.
LayerNorms use PyTorch's default eps 1e-5, as the official code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width (``downsample_rate``)."""

    def __init__(self, *, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(embedding_dim, internal_dim)
        self.v_proj = nn.Linear(embedding_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # B N C -> B N heads d -> B heads N d
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """``B x N x C`` -> ``B x heads x N x d``."""
        return self._heads(self.q_proj(x))

    def project_k(self, x: torch.Tensor) -> torch.Tensor:
        return self._heads(self.k_proj(x))

    def project_v(self, x: torch.Tensor) -> torch.Tensor:
        return self._heads(self.v_proj(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Projected heads -> ``B x Nq x C``. Any input may have batch 1 and is then shared."""
        b = max(q.shape[0], k.shape[0], v.shape[0])
        q, k, v = (t.expand(b, -1, -1, -1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        # B heads N d -> B N (heads d)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def attend_rows(self, queries: torch.Tensor, key_rows: torch.Tensor, value_rows: torch.Tensor) -> torch.Tensor:
        """``forward(queries, key_rows, value_rows)`` for few queries over many rows.

        ``queries`` B x T x C (the tokens), ``key_rows`` and ``value_rows`` (1 or B) x N x C
        (the image, N = 4096). Reassociated so that the N rows are never projected:
        ``q_h . (Wk_h x + bk_h) = (Wk_h^T q_h) . x + const`` (the constant cancels in the
        softmax) and, as each softmax row sums to 1, ``P (X Wv^T + bv) = (P X) Wv^T + bv``.
        Each side then costs N x C x heads*T instead of N x C x C/2 multiply-adds.
        """
        q = self.project_q(queries)  # B heads T d
        heads, t, d = q.shape[1:]
        c = queries.shape[-1]
        # k_proj.weight (heads d) x C -> heads x d x C; (B heads T d) @ (heads d C)
        qk = (q * d**-0.5) @ self.k_proj.weight.view(heads, d, c)
        # softmax((B heads*T C) @ (B C N)) @ (B N C): one attention "head" of width C,
        # scale already applied; the fused kernel never writes the heads*T x N weights out
        pv = F.scaled_dot_product_attention(
            qk.flatten(1, 2)[:, None], key_rows[:, None], value_rows[:, None], scale=1.0
        )
        pv = pv[:, 0].unflatten(1, (heads, t))  # B heads T C
        # (B heads T C) @ (heads C d) + bv -> B heads T d
        out = pv @ self.v_proj.weight.view(heads, d, c).transpose(1, 2) + self.v_proj.bias.view(heads, 1, d)
        # B heads T d -> B T (heads d)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def attend_from_rows(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        q: torch.Tensor | None = None,
        query_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Many rows attending to few tokens, as a product of two thin factors.

        The queries are the rows: projected ``q`` (1 or B) x N x (heads d), met by the
        tokens' keys as one block-diagonal matrix (one product in the output's layout), or
        the unprojected ``query_rows`` (1 or B) x N x C, whose projection is then folded
        into the tokens' keys (``(Wq x + bq) . k = x . (Wq^T k) + bq . k``). ``k`` and ``v``
        are the tokens' projected heads, B x heads x T x d, T small.

        Returns the attention weights ``P`` (B x N x heads*T) and ``M`` (B x heads*T x C),
        the values already through ``out_proj``, such that the attention output is
        ``P @ M + out_proj.bias``: rank heads*T (64) instead of the C/2-wide projections.
        """
        heads, t, d = k.shape[1:]
        k = k * d**-0.5
        if q is not None:
            # B heads T d -> block-diagonal B (heads d) (heads T): head h's keys, transposed,
            # in block (h, h); (B N heads*d) @ that = scores B x N x (heads T)
            eye = torch.eye(heads, dtype=k.dtype, device=k.device)
            blocks = torch.einsum("bhtd,hg->bhdgt", k, eye).reshape(k.shape[0], heads * d, heads * t)
            scores = torch.matmul(q, blocks)
        else:
            c = query_rows.shape[-1]
            # (B heads T d) @ (heads d C) -> B heads T C -> B (heads T) C
            kq = (k @ self.q_proj.weight.view(heads, d, c)).flatten(1, 2)
            kb = (k @ self.q_proj.bias.view(heads, d, 1)).flatten(1)  # B (heads T)
            scores = torch.baddbmm(kb[:, None], query_rows.expand(k.shape[0], -1, -1), kq.transpose(1, 2))
        p = kernels.softmax_short(scores.unflatten(2, (heads, t))).flatten(2)
        # out_proj.weight C x (heads d) -> heads x d x C; (B heads T d) @ (heads d C)
        wo = self.out_proj.weight.t().unflatten(0, (heads, d))
        m = (v @ wo).flatten(1, 2)  # B (heads T) C
        return p, m

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``B x Nq x C``, ``B x Nk x C``, ``B x Nk x C`` -> ``B x Nq x C``.

        Any input may have batch 1 and is then shared by all B items: it is projected once.
        """
        return self.attend(self.project_q(q), self.project_k(k), self.project_v(v))


class ImageTokens(NamedTuple):
    """The image side of the transformer input, computed once and shared by prompts (and,
    in the predictor, by every call on the same image while no mask prompt is given).

    ``rows`` and ``key_pe`` are ``1 x hw x C``; the rest are the first block's projections
    of the image tokens, which do not depend on the prompt: token-to-image k and v as heads
    (``1 x heads x hw x d``), image-to-token q as rows (``1 x hw x heads*d``).

    The image tokens are ``keys()``: ``rows`` themselves, or, when the dense prompt is the
    same at every pixel (no mask prompt), the embedding's rows plus that ``row_offset``
    (``1 x 1 x C``), added where they are used. Then ``rows`` can be the embedding's own
    memory: a session keeps up to ten tiles prepared, and the sum kept would be 4 MB more
    of each. The values are the same (the same float additions).
    """

    rows: torch.Tensor
    key_pe: torch.Tensor
    token_to_image_k: torch.Tensor
    token_to_image_v: torch.Tensor
    image_to_token_q: torch.Tensor
    row_offset: torch.Tensor | None = None

    def keys(self) -> torch.Tensor:
        """The image tokens ``1 x hw x C`` (embedding + dense prompt)."""
        return self.rows if self.row_offset is None else self.rows + self.row_offset


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image, MLP, image-to-token (each + residual + norm)."""

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim=embedding_dim, num_heads=num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            downsample_rate=attention_downsample_rate,
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim=embedding_dim, mlp_dim=mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            downsample_rate=attention_downsample_rate,
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_projections(
        self, keys: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projections of the image tokens this block uses (token-to-image k and v,
        image-to-token q); for the first block they do not depend on the prompt."""
        k = keys + key_pe
        return (
            self.cross_attn_token_to_image.project_k(k),
            self.cross_attn_token_to_image.project_v(keys),
            self.cross_attn_image_to_token.q_proj(k),  # rows: see attend_from_rows
        )

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        image_proj: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        row_offset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries ``B x T x C``, keys ``B x N x C`` (pe tensors broadcast) -> same shapes.

        ``image_proj``: ``image_projections(keys + row_offset, key_pe)`` computed earlier,
        if any; then ``keys`` (1 x N x C, shared) are only added to, and ``row_offset``
        (``ImageTokens.row_offset``, or None) is part of them.
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if image_proj is not None:  # the image side, projected once per image
            t2i_k, t2i_v, i2t_q = image_proj
            attn = t2i.attend(t2i.project_q(queries + query_pe), t2i_k, t2i_v)
            rows = None
        else:  # projections of the image rows folded into the tokens' side
            rows, i2t_q = keys + key_pe, None
            attn = t2i.attend_rows(queries + query_pe, rows, keys)
        queries = self.norm2(queries + attn)
        queries = self.norm3(queries + self.mlp(queries))

        # keys + attention, with the attention as P @ M (rank heads x T, see attend_from_rows).
        # Each head's row of P sums to 1, so a row c added to every key (out_proj's bias, a
        # constant dense prompt) is P @ (M + c / heads): no pass over the B x N x C keys.
        k, v = i2t.project_k(queries + query_pe), i2t.project_v(queries)
        p, m = i2t.attend_from_rows(k, v, q=i2t_q, query_rows=rows)
        shift = i2t.out_proj.bias if row_offset is None else i2t.out_proj.bias + row_offset.reshape(-1)
        m = m + shift / i2t.num_heads
        if image_proj is None and not torch.is_grad_enabled():  # these keys are ours (the first layer's are shared)
            keys = keys.baddbmm_(p, m)
        else:
            keys = torch.baddbmm(keys, p, m)
        keys = self.norm4(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a final token-to-image attention."""

    def __init__(
        self,
        *,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            downsample_rate=attention_downsample_rate,
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def prepare_image(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor | None = None
    ) -> ImageTokens:
        """Image ``1 x C x h x w`` and pe -> shareable ``ImageTokens`` of ``image_embedding +
        dense`` (``dense``: the dense prompt embedding, broadcastable, or ``None`` when it is
        added already). A dense prompt that is the same at every pixel (``1 x C x 1 x 1``, or
        expanded to ``h x w`` with stride 0) is kept as the tokens' ``row_offset``."""
        # B C h w -> B hw C, made contiguous once: on the transposed view every add and
        # projection ran several times slower (strided reads). No copy for an embedding
        # laid out as rows already (the predictor keeps it so).
        def as_rows(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(2).transpose(1, 2).contiguous()

        offset = None
        if dense is None:
            rows = as_rows(image_embedding)
        elif dense.shape[0] == 1 and all(
            n == 1 or st == 0 for n, st in zip(dense.shape[2:], dense.stride()[2:], strict=True)
        ):
            rows, offset = as_rows(image_embedding), as_rows(dense[:, :, :1, :1])
        else:
            rows = as_rows(image_embedding + dense)
        key_pe = as_rows(image_pe)
        keys = rows if offset is None else rows + offset
        return ImageTokens(rows, key_pe, *self.layers[0].image_projections(keys, key_pe), offset)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``B x C x h x w`` or ``1 x C x h x w`` (shared), pe ``1 x C x h x w``,
        tokens ``B x T x C``.

        Returns (tokens ``B x T x C``, image tokens ``B x hw x C``).
        """
        return self.forward_prepared(self.prepare_image(image_embedding, image_pe), point_embedding)

    def forward_prepared(
        self, image: ImageTokens, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with the image side from ``prepare_image``."""
        key_pe = image.key_pe
        first = (image.token_to_image_k, image.token_to_image_v, image.image_to_token_q)
        queries, keys = self.layers[0](point_embedding, image.rows, point_embedding, key_pe, first, image.row_offset)
        for layer in self.layers[1:]:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image.attend_rows(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys

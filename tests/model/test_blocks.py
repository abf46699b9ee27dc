"""Each fast path against its plain reference, and block-level invariants (small sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from napari_sam_hq.model import image_encoder as ie
from napari_sam_hq.model.common import LayerNorm2d
from napari_sam_hq.model.mask_decoder import MaskDecoderHQ
from napari_sam_hq.model.tiny_vit import Attention as TinyAttention
from napari_sam_hq.model.transformer import TwoWayTransformer


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (p[0].numel() ** -0.5 if p.ndim > 1 else 0.5))
    return module


@pytest.mark.parametrize(
    ("query_rows", "band_bytes"),
    [(1, 1), (3, 2**14), (4, 2**40), (100, 2**40)],
    ids=["one-row-one-head", "rows-and-head-groups", "row-bands", "one-band"],
)
@pytest.mark.parametrize("size", [(14, 14), (16, 12)])
def test_banded_attention_equals_plain_softmax(monkeypatch, query_rows, band_bytes, size):
    monkeypatch.setattr(ie, "_QUERY_ROWS", query_rows)
    monkeypatch.setattr(ie, "_BIAS_BAND_BYTES", band_bytes)
    attn = _randomise(ie.Attention(dim=32, num_heads=4, input_size=size), seed=0).eval()
    x = torch.randn(2, *size, 32)
    with torch.inference_mode():
        assert_close(attn(x), attn.reference_attention(x), atol=1e-5, rtol=1e-5)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The official partition (reference for the tests): ``B x H x W x C`` ->
    ``(B * nWin) x ws x ws x C``, zero-padding H and W up to ``ws``.

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


def _plain_block(block, x):
    """The official block: zero-pad and partition into windows, attend, unpartition."""
    shortcut = x
    x = block.norm1(x)
    if block.window_size > 0:
        h, w = x.shape[1:3]
        x, padded = window_partition(x, block.window_size)
        x = window_unpartition(block.attn.reference_attention(x), block.window_size, padded, (h, w))
    else:
        x = block.attn.reference_attention(x)
    x = shortcut + x
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("window", [0, 7], ids=["global", "windowed"])
@pytest.mark.parametrize("rows", [1024, 5], ids=["one-token-band", "token-bands"])
def test_block_equals_the_official_order_of_operations(monkeypatch, window, rows):
    """Bands of windows, only real tokens projected (padding filled with the qkv bias),
    and the token-wise tail in bands of rows: same numbers as padding and partitioning.
    A 20 x 9 grid pads both axes for 7 x 7 windows."""
    monkeypatch.setattr(ie, "_ROWS", rows)
    size = (20, 9)
    block = ie.Block(dim=32, num_heads=4, mlp_ratio=2.0, window_size=window,
                     input_size=size if window == 0 else (window, window))
    block = _randomise(block, seed=11).eval()
    x = torch.randn(2, *size, 32)
    with torch.inference_mode():
        assert_close(block(x), _plain_block(block, x), atol=2e-5, rtol=1e-5)


def test_relative_positions_matter():
    """A zero relative-position table would hide bugs: the bias must change the output."""
    attn = _randomise(ie.Attention(dim=32, num_heads=4, input_size=(8, 8)), seed=1).eval()
    x = torch.randn(1, 8, 8, 32)
    with torch.inference_mode():
        before = attn(x)
        attn.rel_pos_w.add_(torch.randn_like(attn.rel_pos_w))  # a constant would cancel in softmax
        assert (attn(x) - before).abs().max() > 1e-3


def test_relative_table_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="expected 27"):
        ie.relative_table(torch.zeros(31, 4), 14)


@pytest.mark.parametrize("hw", [(64, 64), (14, 14), (20, 9)])
def test_window_partition_round_trip(hw):
    x = torch.randn(2, *hw, 5)
    windows, padded = window_partition(x, 14)
    assert windows.shape[1:] == (14, 14, 5)
    assert padded[0] % 14 == 0 and padded[1] % 14 == 0
    assert torch.equal(window_unpartition(windows, 14, padded, hw), x)


def test_layernorm2d_matches_the_official_formula():
    ln = _randomise(LayerNorm2d(6), seed=2)
    x = torch.randn(3, 6, 5, 7) * 4 + 1
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    expected = ln.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + ln.bias[:, None, None]
    assert_close(ln(x), expected, atol=1e-5, rtol=1e-5)
    # channels-last memory gives the same numbers
    assert_close(ln(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resolution", [1, 2, 5, 7, 14])
def test_tiny_vit_offset_table_is_the_official_scan(resolution):
    """The official numbering: |offsets| in order of first appearance, pairs scanned row-major."""
    import itertools

    from napari_sam_hq.model.tiny_vit import _offset_indices

    points = list(itertools.product(range(resolution), range(resolution)))
    seen: dict[tuple[int, int], int] = {}
    scan = [seen.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(seen)) for a in points for b in points]
    n = len(points)
    assert torch.equal(_offset_indices(resolution), torch.tensor(scan).view(n, n))


def test_tiny_vit_attention_uses_the_loaded_biases():
    """The official module caches its bias table at .eval(); ours reads the parameters every call."""
    attn = _randomise(TinyAttention(dim=16, key_dim=8, num_heads=2, resolution=7), seed=3).eval()
    x = torch.randn(2, 49, 16)
    with torch.inference_mode():
        before = attn(x)
        attn.attention_biases.add_(torch.randn_like(attn.attention_biases))
        assert (attn(x) - before).abs().max() > 1e-3


@pytest.fixture(scope="module")
def decoder() -> MaskDecoderHQ:
    return _randomise(MaskDecoderHQ(transformer=TwoWayTransformer(), vit_dim=48), seed=4).eval()


def _decoder_inputs(b: int, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 256, 64, 64, generator=gen)
    pe = torch.randn(1, 256, 64, 64, generator=gen)
    sparse = torch.randn(b, 3, 256, generator=gen)
    dense = torch.randn(1, 256, 1, 1, generator=gen)
    early = torch.randn(1, 64, 64, 48, generator=gen)
    return emb, pe, sparse, dense, early


@pytest.mark.parametrize("b", [1, 3])
def test_fused_hq_projection_equals_plain_path(decoder, b):
    emb, pe, sparse, dense, early = _decoder_inputs(b)
    with torch.inference_mode():
        hq = decoder.hq_features(emb, early)
        sam_f, hq_f, iou_f = decoder.predict_masks(emb, pe, sparse, dense, hq, fused=True)
        sam_p, hq_p, iou_p = decoder.predict_masks(emb, pe, sparse, dense, hq, fused=False)
    assert hq_f.shape == (b, 1, 256, 256) and sam_f.shape == (b, 4, 256, 256)
    assert_close(hq_f, hq_p, atol=2e-4, rtol=1e-4)
    assert_close(sam_f, sam_p)
    assert_close(iou_f, iou_p)


def test_multimask_candidates_are_sorted_and_combine_sam_with_hq(decoder):
    emb, pe, sparse, dense, early = _decoder_inputs(4, seed=6)
    with torch.inference_mode():
        hq = decoder.hq_features(emb, early)
        sam, hq_logits, iou = decoder.predict_masks(emb, pe, sparse, dense, hq)
        logits, scores = decoder(emb, pe, sparse, dense, hq, multimask_output=True, hq_token_only=False)
        hq_only, hq_scores = decoder(emb, pe, sparse, dense, hq, multimask_output=True, hq_token_only=True)
        single, single_scores = decoder(emb, pe, sparse, dense, hq, multimask_output=False, hq_token_only=False)
        hq_single, hq_single_scores = decoder(emb, pe, sparse, dense, hq, multimask_output=False, hq_token_only=True)
    assert logits.shape == (4, 3, 256, 256)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for i in range(4):
        best = int(iou[i, 1:].argmax()) + 1
        assert_close(logits[i, 0], sam[i, best] + hq_logits[i, 0])
        assert_close(scores[i, 0], iou[i, best])
    assert_close(hq_only, hq_logits)
    assert_close(hq_scores[:, 0], iou[:, 1:].max(dim=1).values)
    assert_close(single, sam[:, :1] + hq_logits)
    assert_close(single_scores[:, 0], iou[:, 0])
    assert_close(hq_single, hq_logits)
    assert_close(hq_single_scores[:, 0], iou[:, 0])


def test_batchnorm_folding_keeps_tiny_vit_outputs():
    from napari_sam_hq.model import build_sam_hq, prepare_for_inference

    from ..oracles import noisy_state_dict

    plain = build_sam_hq("vit_tiny")
    plain.load_state_dict(noisy_state_dict(plain, seed=8))
    folded = build_sam_hq("vit_tiny")
    folded.load_state_dict(plain.state_dict())
    prepare_for_inference(folded)
    assert not any(k.endswith("running_var") for k in folded.state_dict())
    x = torch.rand(1, 3, 1024, 1024) * 255
    with torch.inference_mode():
        for a, b in zip(plain.encode(x), folded.encode(x), strict=True):
            assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("b", [1, 3])
def test_prepared_image_tokens_give_the_same_masks(decoder, b):
    """The predictor computes the transformer's image side once per image; same results."""
    emb, pe, sparse, dense, early = _decoder_inputs(b, seed=9)
    with torch.inference_mode():
        hq = decoder.hq_features(emb, early)
        tokens = decoder.prepare_image(emb, pe, dense)
        plain = decoder(emb, pe, sparse, dense, hq, multimask_output=True, hq_token_only=False)
        prepared = decoder(emb, pe, sparse, dense, hq, multimask_output=True, hq_token_only=False, image_tokens=tokens)
    assert_close(prepared[0], plain[0])
    assert_close(prepared[1], plain[1])


@pytest.mark.parametrize("kind", ["channel", "expanded", "pixel"])
def test_prepared_tokens_keep_a_constant_dense_prompt_as_an_offset(decoder, kind):
    """A dense prompt that is the same at every pixel (no mask prompt) is added where the
    tokens are used, not stored as a second copy of the embedding; the tokens are the same
    values either way, bit for bit."""
    emb, pe, sparse, dense, early = _decoder_inputs(1, seed=11)
    if kind == "expanded":  # as the prompt encoder gives it: stride 0 over h x w
        dense = dense.expand(1, -1, 64, 64)
    elif kind == "pixel":  # a mask prompt: different at every pixel
        dense = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        tokens = decoder.prepare_image(emb, pe, dense)
        summed = (emb + dense).flatten(2).transpose(1, 2)
        assert torch.equal(tokens.keys(), summed)
        assert (tokens.row_offset is None) == (kind == "pixel")
        hq = decoder.hq_features(emb, early)
        plain = decoder(emb, pe, sparse, dense, hq, multimask_output=True, hq_token_only=False)
        prepared = decoder(emb, pe, sparse, dense, hq, multimask_output=True, hq_token_only=False, image_tokens=tokens)
    assert torch.equal(prepared[0], plain[0]) and torch.equal(prepared[1], plain[1])


def _plain_attention(attn, q, k, v):
    """The official Attention: project, split heads, softmax(q k^T / sqrt(d)) v, merge, project."""
    heads = attn.num_heads

    def split(x):
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    q, k, v = split(attn.q_proj(q)), split(attn.k_proj(k)), split(attn.v_proj(v))
    w = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(dim=-1)
    return attn.out_proj((w @ v).transpose(1, 2).flatten(2))


def _plain_two_way(transformer, image, pe, tokens):
    """The official TwoWayTransformer, written out with `_plain_attention`."""
    keys = image.flatten(2).transpose(1, 2)
    key_pe = pe.flatten(2).transpose(1, 2)
    queries = tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _plain_attention(layer.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + _plain_attention(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        q, k = queries + tokens, keys + key_pe
        queries = layer.norm2(queries + _plain_attention(layer.cross_attn_token_to_image, q, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + tokens, keys + key_pe
        keys = layer.norm4(keys + _plain_attention(layer.cross_attn_image_to_token, k, q, queries))
    q, k = queries + tokens, keys + key_pe
    queries = transformer.norm_final_attn(queries + _plain_attention(transformer.final_attn_token_to_image, q, k, keys))
    return queries, keys


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("shared_image", [True, False], ids=["prepared-image", "image-per-prompt"])
def test_two_way_transformer_equals_the_plain_formula(b, shared_image):
    """The reassociated attentions (image rows never projected per prompt, image-to-token
    attention as P @ M) give the plain attention's numbers."""
    transformer = _randomise(TwoWayTransformer(), seed=7).eval()
    gen = torch.Generator().manual_seed(8)
    image = torch.randn(1 if shared_image else b, 256, 64, 64, generator=gen)
    pe = torch.randn(1, 256, 64, 64, generator=gen)
    tokens = torch.randn(b, 8, 256, generator=gen)
    with torch.inference_mode():
        if shared_image:
            queries, keys = transformer.forward_prepared(transformer.prepare_image(image, pe), tokens)
        else:
            queries, keys = transformer(image, pe, tokens)
        expected_q, expected_k = _plain_two_way(transformer, image.expand(b, -1, -1, -1), pe, tokens)
    assert_close(queries, expected_q, atol=2e-5, rtol=1e-5)
    assert_close(keys, expected_k, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("band_bytes", [1, 3000], ids=["row-bands", "few-row-bands"])
def test_tiny_vit_bands_equal_the_whole_image(monkeypatch, band_bytes):
    """MBConv in bands of rows (one halo row each side) and TinyViT's MLP in bands of
    tokens give the whole-image numbers, channels-last included."""
    from napari_sam_hq.model import tiny_vit as tv

    mb = _randomise(tv.MBConv(chans=4, expand_ratio=4.0), seed=12).eval()
    block = _randomise(tv.TinyViTBlock(dim=8, input_resolution=(9, 11), num_heads=2, window_size=7,
                                       mlp_ratio=4.0), seed=13).eval()
    x = torch.randn(2, 4, 13, 10).contiguous(memory_format=torch.channels_last)
    tokens = torch.randn(2, 9 * 11, 8)
    with torch.inference_mode():
        monkeypatch.setattr(tv, "_BAND_BYTES", 2**40)
        whole_mb, whole_block = mb(x), block(tokens)
        monkeypatch.setattr(tv, "_BAND_BYTES", band_bytes)
        banded_mb, banded_block = mb(x), block(tokens)
    assert_close(banded_mb, whole_mb, atol=1e-5, rtol=1e-5)
    assert_close(banded_block, whole_block, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("band_bytes", [1, 3000], ids=["row-bands", "few-row-bands"])
@pytest.mark.parametrize("size", [(16, 16), (13, 10), (9, 7)], ids=["even", "odd-rows", "odd"])
def test_tiny_vit_strided_convolutions_in_bands_equal_the_whole_image(monkeypatch, band_bytes, size):
    """The patch embedding (two stride-2 3 x 3 convolutions) and patch merging (stride 2
    and 1, image or token input) by bands of output rows with their halo rows: the
    whole-image numbers, the zero padding at the top and bottom included."""
    from napari_sam_hq.model import tiny_vit as tv

    h, w = size
    embed = _randomise(tv.PatchEmbed(in_chans=3, embed_dim=8), seed=14).eval()
    merges = [_randomise(tv.PatchMerging(input_resolution=size, dim=4, out_dim=6, stride=s), seed=15 + s).eval()
              for s in (2, 1)]
    image = torch.randn(2, 3, 4 * h, 4 * w + 1).contiguous(memory_format=torch.channels_last)
    grid = torch.randn(2, 4, h, w).contiguous(memory_format=torch.channels_last)
    tokens = torch.randn(1, h * w, 4)
    with torch.inference_mode():
        monkeypatch.setattr(tv, "_BAND_BYTES", 2**40)
        whole = [embed(image), *(m(x) for m in merges for x in (grid, tokens))]
        monkeypatch.setattr(tv, "_BAND_BYTES", band_bytes)
        banded = [embed(image), *(m(x) for m in merges for x in (grid, tokens))]
    assert banded[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(banded, whole, strict=True):
        assert a.shape == b.shape
        assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the GPU path, run on the CPU


@pytest.mark.parametrize("window", [0, 7], ids=["global", "windowed"])
def test_whole_tensor_vit_block_equals_the_official_order(window):
    """The GPU path (every window or the whole grid in one attention call, the token-wise
    tail on the whole tensor) gives the official block's numbers; 20 x 9 pads both axes."""
    size = (20, 9)
    block = ie.Block(dim=32, num_heads=4, mlp_ratio=2.0, window_size=window,
                     input_size=size if window == 0 else (window, window))
    block = _randomise(block, seed=11).eval()
    block.banded = False
    x = torch.randn(2, *size, 32)
    with torch.inference_mode():
        assert_close(block(x), _plain_block(block, x), atol=2e-5, rtol=1e-5)


def test_whole_tensor_tiny_vit_equals_the_banded_path(monkeypatch):
    from napari_sam_hq.model import tiny_vit as tv

    monkeypatch.setattr(tv, "_BAND_BYTES", 3000)  # many bands, chunks of windows
    mb = _randomise(tv.MBConv(chans=4, expand_ratio=4.0), seed=12).eval()
    block = _randomise(tv.TinyViTBlock(dim=8, input_resolution=(9, 11), num_heads=2, window_size=7,
                                       mlp_ratio=4.0), seed=13).eval()
    x = torch.randn(2, 4, 13, 10).contiguous(memory_format=torch.channels_last)
    tokens = torch.randn(2, 9 * 11, 8)
    with torch.inference_mode():
        banded = mb(x), block(tokens)
        for m in (mb, block, block.attn):
            m.banded = False
        whole = mb(x), block(tokens)
    for a, b in zip(whole, banded, strict=True):
        assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("b", [1, 3])
def test_whole_batch_mask_heads_equal_one_prompt_at_a_time(decoder, b):
    emb, pe, sparse, dense, early = _decoder_inputs(b, seed=8)
    with torch.inference_mode():
        hq = decoder.hq_features(emb, early)
        per_prompt = decoder.predict_masks(emb, pe, sparse, dense, hq)
        decoder.banded = False
        try:
            batched = decoder.predict_masks(emb, pe, sparse, dense, hq)
        finally:
            decoder.banded = True
    for a, c in zip(batched, per_prompt, strict=True):
        assert_close(a, c, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("multimask", "hq_only"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("banded", [True, False], ids=["per-prompt", "whole-batch"])
def test_windowed_masks_equal_the_full_masks_inside_their_window(decoder, multimask, hq_only, banded):
    from napari_sam_hq.model.mask_decoder import OUTSIDE_LOGIT

    emb, pe, sparse, dense, early = _decoder_inputs(4, seed=9)
    # an inner window, one at the plane's corner (zero padding there is the module's own),
    # one covering everything, one empty
    windows = torch.tensor([[20, 27, 30, 41], [0, 5, 58, 64], [0, 64, 0, 64], [10, 10, 3, 9]])
    with torch.inference_mode():
        hq = decoder.hq_features(emb, early)
        full, full_scores = decoder(emb, pe, sparse, dense, hq, multimask_output=multimask, hq_token_only=hq_only)
        decoder.banded = banded
        try:
            win, win_scores = decoder(emb, pe, sparse, dense, hq, multimask_output=multimask,
                                      hq_token_only=hq_only, windows=windows)
        finally:
            decoder.banded = True
    assert win.shape == full.shape
    assert_close(win_scores, full_scores)
    for i, (r0, r1, c0, c1) in enumerate(windows.tolist()):
        inside = torch.zeros(256, 256, dtype=torch.bool)
        inside[4 * r0 : 4 * r1, 4 * c0 : 4 * c1] = True
        assert_close(win[i][:, inside], full[i][:, inside], atol=2e-4, rtol=1e-4)
        assert (win[i][:, ~inside] == OUTSIDE_LOGIT).all()
    assert (full[0] != OUTSIDE_LOGIT).all()  # the fill is not what the full masks say anyway


def test_windows_must_be_one_rectangle_per_prompt(decoder):
    emb, pe, sparse, dense, early = _decoder_inputs(2, seed=9)
    with torch.inference_mode(), pytest.raises(ValueError, match="B x 4"):
        decoder(emb, pe, sparse, dense, decoder.hq_features(emb, early), multimask_output=False,
                hq_token_only=False, windows=torch.zeros(3, 4, dtype=torch.int64))


def test_the_builder_picks_the_path_by_device():
    from napari_sam_hq.model import build_sam_hq
    from napari_sam_hq.model.build import place, set_compute_path

    model = place(build_sam_hq("vit_tiny"), device="cpu")
    flags = [m.banded for m in model.modules() if hasattr(m, "banded")]
    assert len(flags) > 10 and all(flags)
    set_compute_path(model, banded=False)
    assert not any(m.banded for m in model.modules() if hasattr(m, "banded"))
    from napari_sam_hq.model.build import default_dtype

    assert model.dtype == torch.float32 == default_dtype(torch.device("cpu"))
    assert default_dtype(torch.device("cuda")) == default_dtype(torch.device("mps")) == torch.float16


@pytest.mark.parametrize("pair", ["small_pair", "tiny_pair"])
def test_whole_tensor_path_end_to_end(request, pair):
    """The GPU path through a whole model (ViT windows + global blocks; TinyViT's four
    stages), run on the CPU: the same embedding, early feature, HQ features and masks."""
    from napari_sam_hq.model.build import set_compute_path

    model = request.getfixturevalue(pair).ours
    x = torch.rand(1, 3, 1024, 768, generator=torch.Generator().manual_seed(3)) * 255
    emb, pe, sparse, dense, _ = _decoder_inputs(3, seed=4)
    try:
        with torch.inference_mode():
            banded = model.encode(x)
            set_compute_path(model, banded=False)
            whole = model.encode(x)
            masks_whole = model.mask_decoder.predict_masks(banded[0], pe, sparse, dense, banded[2])
            set_compute_path(model, banded=True)
            masks_banded = model.mask_decoder.predict_masks(banded[0], pe, sparse, dense, banded[2])
    finally:
        set_compute_path(model, banded=True)
    for a, b in zip(whole, banded, strict=True):
        assert_close(a, b, atol=2e-4, rtol=1e-4)
    for a, b in zip(masks_whole, masks_banded, strict=True):
        assert_close(a, b, atol=1e-4, rtol=1e-4)

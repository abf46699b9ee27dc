"""The fused CPU kernels against the plain modules, and when each path runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.testing import assert_close

from napari_sam_hq.model import kernels

needs_onednn = pytest.mark.skipif(not kernels.onednn_available(), reason="this torch has no oneDNN")


def _ops_run(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.fixture
def plain(monkeypatch):
    """Run the kernels' fallbacks (as on a torch without oneDNN)."""
    monkeypatch.setattr(kernels, "onednn_available", lambda: False)


ACTS = [None, nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU()]


@needs_onednn
@pytest.mark.parametrize("act", ACTS, ids=["none", "gelu", "gelu-tanh", "relu"])
def test_linear_equals_the_module_then_its_activation(act, monkeypatch):
    torch.manual_seed(0)
    layer = nn.Linear(96, 160)
    x = torch.randn(3, 70, 96)  # 3 x 70 x 96 x 160: above the size oneDNN takes
    residual = torch.randn(3, 70, 160)
    with torch.inference_mode():
        expected = layer(x) if act is None else act(layer(x))
        got = kernels.linear(x, layer, act=act)
        assert "mkldnn::_linear_pointwise" in _ops_run(lambda: kernels.linear(x, layer, act=act))
        added = kernels.linear_add(x, residual, layer)
        monkeypatch.setattr(kernels, "onednn_available", lambda: False)
        fallback = kernels.linear(x, layer, act=act)
    assert got.shape == (3, 70, 160)
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert_close(fallback, expected)
    assert_close(added, residual + layer(x).detach(), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_small_products_and_autograd_take_the_plain_modules():
    layer = nn.Linear(16, 8)
    with torch.inference_mode():
        small = torch.randn(2, 16)  # 256 multiply-adds: a oneDNN call costs more than it saves
        assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: kernels.linear(small, layer))
    # With gradients (the adaptation trains the decoder): the plain modules, which autograd knows.
    big = nn.Linear(256, 256)
    x = torch.randn(64, 256, requires_grad=True)
    out = kernels.linear(x, big, act=nn.GELU())
    out.sum().backward()
    assert x.grad is not None and big.weight.grad is not None
    assert_close(out, F.gelu(big(x)))


@needs_onednn
@pytest.mark.parametrize("groups", [1, 8], ids=["dense", "depthwise"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "contiguous"])
def test_conv_equals_the_module_and_keeps_the_memory_format(groups, channels_last):
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16 if groups == 1 else 8, 3, stride=1, padding=1, groups=groups)
    strided = nn.Conv2d(8, 8, 3, stride=(2, 1), padding=(1, 0), groups=groups)
    x = torch.randn(2, 8, 21, 19)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = kernels.conv(x, conv, act=nn.GELU())
        assert "mkldnn::_convolution_pointwise" in _ops_run(lambda: kernels.conv(x, conv))
        rows = kernels.conv(x[:, :, 4:11], conv, padding=(0, 1))  # a band of rows, its halo given
        residual = torch.randn_like(conv(x))
        added = kernels.conv_add(x, residual, conv)
        expected = conv(x)
        assert_close(kernels.conv(x, strided), strided(x), atol=1e-5, rtol=1e-5)
    assert_close(got, F.gelu(expected), atol=1e-5, rtol=1e-5)
    assert_close(rows, expected[:, :, 5:10], atol=1e-5, rtol=1e-5)
    assert_close(added, residual + expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_the_fallbacks_equal_the_modules(plain):
    torch.manual_seed(2)
    layer, conv = nn.Linear(64, 128), nn.Conv2d(4, 6, 3, stride=2, padding=(1, 0))
    x, image = torch.randn(40, 64), torch.randn(1, 4, 9, 9)
    with torch.inference_mode():
        assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: kernels.linear(x, layer))
        assert_close(kernels.linear(x, layer, act=nn.ReLU()), F.relu(layer(x)))
        assert_close(kernels.linear_add(x, x[:, :1].expand(-1, 128), layer), x[:, :1] + layer(x))
        assert_close(kernels.conv(image, conv, act=nn.GELU()), F.gelu(conv(image)))
        residual = torch.randn_like(conv(image))
        assert_close(kernels.conv_add(image, residual, conv), residual + conv(image))


def test_unfusable_activations_and_padding_are_refused():
    with pytest.raises(ValueError, match="no fused form of SiLU"):
        kernels.linear(torch.randn(2, 4), nn.Linear(4, 4), act=nn.SiLU())
    with pytest.raises(ValueError, match="numeric zero padding"):
        kernels.conv(torch.randn(1, 2, 5, 5), nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


@pytest.mark.parametrize("pair", ["small_pair", "tiny_pair"])
def test_encoders_give_the_same_outputs_without_onednn(request, pair, monkeypatch):
    """Whole encoders (ViT windows + global blocks; TinyViT's four stages) and the HQ
    features: the fused CPU path equals the plain one (a torch without oneDNN)."""
    model = request.getfixturevalue(pair).ours
    x = torch.rand(1, 3, 1024, 768, generator=torch.Generator().manual_seed(3)) * 255
    with torch.inference_mode():
        fused = model.encode(x)
        monkeypatch.setattr(kernels, "onednn_available", lambda: False)
        plain_out = model.encode(x)
    for a, b in zip(fused, plain_out, strict=True):
        assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_softmax_short_equals_softmax_and_is_what_the_decoder_runs():
    """The decoder's image-to-token softmax over a few tokens: the same values as
    ``softmax``, large logits too (the max is subtracted), torch's own under autograd, and it
    is the kernel the two-way transformer runs (no ``aten::_softmax`` over the 4096 rows)."""
    from napari_sam_hq.model.transformer import Attention

    torch.manual_seed(4)
    x = torch.randn(2, 4096, 8, 7) * 30 + 500
    with torch.inference_mode():
        got = kernels.softmax_short(x)
    assert_close(got, x.softmax(dim=-1), atol=1e-6, rtol=1e-5)
    assert torch.isfinite(got).all()
    leaf = torch.randn(3, 5, requires_grad=True)
    kernels.softmax_short(leaf).pow(2).sum().backward()  # would fail on the in-place exp
    assert leaf.grad is not None

    attn = Attention(embedding_dim=64, num_heads=4, downsample_rate=2)
    rows, tokens = torch.randn(1, 4096, 64), torch.randn(2, 7, 64)
    k, v = attn.project_k(tokens), attn.project_v(tokens)
    with torch.inference_mode():
        p, m = attn.attend_from_rows(k, v, query_rows=rows)
        ops = _ops_run(lambda: attn.attend_from_rows(k, v, query_rows=rows))
    assert "aten::_softmax" not in ops
    # the plain formula: softmax over the tokens of each head, then the values through out_proj
    q = attn.project_q(rows).expand(2, -1, -1, -1)  # B heads N d
    plain = torch.softmax(q @ k.transpose(-1, -2) * (k.shape[-1] ** -0.5), dim=-1) @ v
    plain = attn.out_proj(plain.transpose(1, 2).flatten(2))
    assert_close(p @ m + attn.out_proj.bias, plain.detach(), atol=1e-5, rtol=1e-4)

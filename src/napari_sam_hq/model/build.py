"""Build a SAM-HQ model from a spec, and move it to a device and dtype from outside."""

from __future__ import annotations

import warnings

import torch

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoderHQ
from .prompt_encoder import PromptEncoder
from .registry import MODEL_SPECS, ModelSpec, TinyViTSpec, ViTSpec
from .sam_hq import SamHQ
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer


def build_sam_hq(spec: ModelSpec | str) -> SamHQ:
    """A SAM-HQ model with freshly initialised weights, in eval mode, float32 on the CPU."""
    if isinstance(spec, str):
        if spec not in MODEL_SPECS:
            raise ValueError(f"unknown model {spec!r}; choose one of {sorted(MODEL_SPECS)}")
        spec = MODEL_SPECS[spec]
    enc = spec.encoder
    if isinstance(enc, ViTSpec):
        image_encoder: ImageEncoderViT | TinyViT = ImageEncoderViT(
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            global_attn_indexes=enc.global_attn_indexes,
        )
    elif isinstance(enc, TinyViTSpec):
        image_encoder = TinyViT(
            embed_dims=enc.embed_dims,
            depths=enc.depths,
            num_heads=enc.num_heads,
            window_sizes=enc.window_sizes,
        )
    else:  # pragma: no cover - guarded by the type
        raise TypeError(f"unknown encoder spec {enc!r}")
    model = SamHQ(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(),
        mask_decoder=MaskDecoderHQ(transformer=TwoWayTransformer(), vit_dim=enc.early_dim),
        name=spec.name,
    )
    return model.eval().requires_grad_(False)


def prepare_for_inference(model: SamHQ) -> SamHQ:
    """Rewrites that change no result beyond float rounding, applied once weights are loaded.

    TinyViT: BatchNorm folded into the preceding convolutions.
    """
    fuse = getattr(model.image_encoder, "fuse_batchnorm_", None)
    if callable(fuse):
        fuse()
    return model


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; others are checked for availability."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use 'cpu' or 'auto'")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' was asked for but is not available; use 'cpu' or 'auto'")
    return dev


def set_compute_path(model: SamHQ, *, banded: bool) -> SamHQ:
    """Choose how the blocks run, with the same results either way (tests run both on the CPU):
    ``banded=True`` for CPUs (bands of rows, one attention head or prompt per call: small
    intermediates that stay in cache and under glibc's mmap threshold), ``False`` for GPUs
    (whole tensors, every window, head and prompt in one kernel: few launches)."""
    for module in model.modules():
        if hasattr(module, "banded"):
            module.banded = banded
    return model


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on the CPU; float16 on CUDA and MPS. Chosen from ``benchmarks/bench_gpu.py``'s
    accuracy columns (docs/engine.md): float16 logits stayed 10x closer to float32 than
    bfloat16's (masks IoU >= 0.995 against float32 and the official code), at half the
    memory traffic of float32."""
    return torch.float32 if device.type == "cpu" else torch.float16


def place(model: SamHQ, *, device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> SamHQ:
    """Move ``model`` to ``device`` and choose its compute path (``set_compute_path``: banded
    on the CPU, whole tensors elsewhere); ``dtype`` defaults to ``default_dtype(device)``.

    Half precision is for GPUs: on CPUs without half-precision matrix units it is many
    times slower than float32 (17x for bfloat16 on one of ours), so asking for it on the
    CPU warns.
    """
    dev = resolve_device(device)
    dtype = dtype or default_dtype(dev)
    if dev.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        warnings.warn(
            f"{dtype} on the CPU is usually much slower than float32; use float32 unless this "
            "CPU has native half-precision matrix units",
            stacklevel=2,
        )
    return set_compute_path(model.to(device=dev, dtype=dtype), banded=dev.type == "cpu")

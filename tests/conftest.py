"""Shared fixtures: the official model and ours on the same seeded random weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from napari_sam_hq.model import SamHQ, build_sam_hq, prepare_for_inference
from napari_sam_hq.model.checkpoints import load_into
from napari_sam_hq.model.registry import ModelSpec, ViTSpec

from .oracles import noisy_state_dict, official_model, official_vit, refresh_official

# A ViT with the layout of ViT-B/L/H (windowed + global blocks, 4096 tokens) but small widths.
SMALL_VIT = ViTSpec(embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3))


@dataclass
class Pair:
    official: torch.nn.Module
    ours: SamHQ
    state_dict: dict


def run_python(code: str) -> str:
    """The standard output of ``code`` run in a fresh Python (memory peaks are measured there,
    away from what the test session holds)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def _pair(official: torch.nn.Module, ours: SamHQ, seed: int) -> Pair:
    sd = noisy_state_dict(official, seed=seed)
    official.load_state_dict(sd, strict=True)
    refresh_official(official)
    load_into(ours, sd, "test weights")
    return Pair(official, prepare_for_inference(ours), sd)


@pytest.fixture(scope="session")
def small_pair() -> Pair:
    torch.manual_seed(0)
    off = official_vit(
        embed_dim=SMALL_VIT.embed_dim,
        depth=SMALL_VIT.depth,
        num_heads=SMALL_VIT.num_heads,
        global_attn_indexes=SMALL_VIT.global_attn_indexes,
    )
    return _pair(off, build_sam_hq(ModelSpec("small_vit", SMALL_VIT)), seed=1)


@pytest.fixture(scope="session")
def tiny_pair() -> Pair:
    torch.manual_seed(0)
    return _pair(official_model("vit_tiny"), build_sam_hq("vit_tiny"), seed=2)


@pytest.fixture(scope="session")
def vit_b_pair() -> Pair:
    torch.manual_seed(0)
    return _pair(official_model("vit_b"), build_sam_hq("vit_b"), seed=3)


@pytest.fixture(scope="session")
def small_checkpoint(small_pair, tmp_path_factory) -> str:
    """``small_pair``'s weights as an official-format .pth file (for loaders, CLI, widget)."""
    path = tmp_path_factory.mktemp("ckpt") / "sam_hq_small.pth"
    torch.save(small_pair.state_dict, path)
    return str(path)


def blob_image(h: int, w: int, *, seed: int = 0, channels: int = 3) -> np.ndarray:
    """uint8 image with bright discs on a gradient: structure for the model to see."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 30 + 60 * xx / w
    for _ in range(8):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(h, w)
        img = img + 120 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return img if channels == 1 else np.repeat(img[..., None], channels, axis=-1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder: no checkpoints or embedding stores are shared
    with the user's ~/.cache or with other tests."""
    monkeypatch.setenv("NAPARI_SAM_HQ_CACHE", str(tmp_path_factory.mktemp("cache")))

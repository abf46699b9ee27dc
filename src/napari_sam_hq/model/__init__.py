"""SAM-HQ in plain PyTorch: ViT-B/L/H and TinyViT encoders, prompt encoder, HQ decoder.

``load_model`` is the entry point:

>>> from napari_sam_hq.model import load_model
>>> model = load_model("vit_b")                   # registry name: downloaded once, cached
>>> model = load_model("/data/sam_hq_vit_l.pth")  # official checkpoint file
>>> model = load_model("/data/sam-hq-vit-base")   # Hugging Face folder (config.json + safetensors)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# Lazy exports (PEP 562): importing the package, or a torch-free module of it (registry,
# download, lazy), does not import torch; the first use of a name below imports its module.
_EXPORTS = {
    "CHECKPOINTS": "registry",
    "MODEL_SPECS": "registry",
    "CheckpointInfo": "registry",
    "ModelSpec": "registry",
    "CheckpointError": "errors",
    "DownloadError": "download",
    "LazyModel": "lazy",
    "SamHQ": "sam_hq",
    "build_sam_hq": "build",
    "prepare_for_inference": "build",
    "resolve_device": "build",
    "load_model": "load",
}
__all__ = [
    "CHECKPOINTS",
    "CheckpointError",
    "CheckpointInfo",
    "DownloadError",
    "LazyModel",
    "MODEL_SPECS",
    "ModelSpec",
    "SamHQ",
    "build_sam_hq",
    "load_model",
    "prepare_for_inference",
    "resolve_device",
]

if TYPE_CHECKING:  # for type checkers and the API docs, which read this file statically
    from .build import build_sam_hq, prepare_for_inference, resolve_device
    from .download import DownloadError
    from .errors import CheckpointError
    from .lazy import LazyModel
    from .load import load_model
    from .registry import CHECKPOINTS, MODEL_SPECS, CheckpointInfo, ModelSpec
    from .sam_hq import SamHQ


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Named model sizes and the official SAM-HQ checkpoints.

A spec holds only what differs between sizes; everything else (prompt encoder, two-way
transformer, decoder widths) is the same for every SAM-HQ model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViTSpec:
    """ViT image encoder (``vit_b``, ``vit_l``, ``vit_h``)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]

    @property
    def early_dim(self) -> int:
        """Channels of the early feature fused by the HQ decoder."""
        return self.embed_dim


@dataclass(frozen=True)
class TinyViTSpec:
    """TinyViT image encoder (``vit_tiny``, Light HQ-SAM)."""

    embed_dims: tuple[int, int, int, int] = (64, 128, 160, 320)
    depths: tuple[int, int, int, int] = (2, 2, 6, 2)
    num_heads: tuple[int, int, int, int] = (2, 4, 5, 10)
    window_sizes: tuple[int, int, int, int] = (7, 7, 14, 7)

    @property
    def early_dim(self) -> int:
        return self.embed_dims[2]


EncoderSpec = ViTSpec | TinyViTSpec


@dataclass(frozen=True)
class ModelSpec:
    name: str
    encoder: EncoderSpec


MODEL_SPECS: dict[str, ModelSpec] = {
    "vit_b": ModelSpec("vit_b", ViTSpec(768, 12, 12, (2, 5, 8, 11))),
    "vit_l": ModelSpec("vit_l", ViTSpec(1024, 24, 16, (5, 11, 17, 23))),
    "vit_h": ModelSpec("vit_h", ViTSpec(1280, 32, 16, (7, 15, 23, 31))),
    "vit_tiny": ModelSpec("vit_tiny", TinyViTSpec()),
}


@dataclass(frozen=True)
class CheckpointInfo:
    """Where an official checkpoint is published and how to recognise a good copy.

    ``size`` (bytes) and ``sha256`` are checked when known. The SAM-HQ authors publish
    neither, so they are ``None`` here: a download is then checked against the
    server's Content-Length, and every file is checked structurally when it loads
    (all keys, all shapes, ``strict=True``).
    """

    name: str
    file_name: str
    url: str
    size: int | None = None
    sha256: str | None = None


_HF = "https://huggingface.co/lkeab/hq-sam/resolve/main/"

CHECKPOINTS: dict[str, CheckpointInfo] = {
    name: CheckpointInfo(name, f"sam_hq_{name}.pth", _HF + f"sam_hq_{name}.pth")
    for name in MODEL_SPECS
}

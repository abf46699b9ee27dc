"""Hugging Face-format SAM-HQ checkpoints written by ``transformers`` itself.

``random_hf_model`` builds a ``SamHQModel`` of a given ViT size, puts seeded noise on
every floating-point tensor (as ``oracles.noisy_state_dict``) and, with ``folder``,
writes it with ``save_pretrained``: config.json + model.safetensors, exactly what users
download from the Hub.
"""

from __future__ import annotations

from pathlib import Path

from .oracles import noisy_state_dict

HF_SIZES = {
    # name: (hidden, depth, heads, global attention blocks)
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "small": (64, 4, 2, (1, 3)),
}


def random_hf_model(name: str, *, seed: int, folder: Path | None = None):
    from transformers import SamHQConfig, SamHQModel

    hidden, depth, heads, global_idx = HF_SIZES[name]
    config = SamHQConfig(
        vision_config=dict(
            hidden_size=hidden,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            global_attn_indexes=list(global_idx),
            mlp_dim=4 * hidden,
        ),
        mask_decoder_config=dict(vit_dim=hidden),
    )
    model = SamHQModel(config).eval()
    model.load_state_dict(noisy_state_dict(model, seed=seed), strict=True)
    if folder is not None:
        model.save_pretrained(folder)
    return model


def save_hf_checkpoint(name: str, folder: Path, *, seed: int = 0) -> Path:
    random_hf_model(name, seed=seed, folder=folder)
    return folder

"""Read SAM-HQ checkpoints: the official ``.pth`` files and Hugging Face-format folders.

Every load is strict: each parameter of the model must be in the file with the right
shape, and nothing else may be. The model size is detected from the keys and shapes,
never from the file name. Hugging Face checkpoints (``config.json`` +
``model.safetensors``, as ``SamHQModel.save_pretrained`` writes them) are mapped once,
here, onto the official names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError
from .registry import MODEL_SPECS, ModelSpec, TinyViTSpec, ViTSpec

StateDict = dict[str, torch.Tensor]

HQ_PREFIXES = (
    "mask_decoder.hf_token",
    "mask_decoder.hf_mlp",
    "mask_decoder.compress_vit_feat",
    "mask_decoder.embedding_encoder",
    "mask_decoder.embedding_maskfeature",
)


# --------------------------------------------------------------------------- reading


def read_state_dict(path: str | Path) -> tuple[StateDict, str]:
    """Official-name state dict from a ``.pth`` file, a ``.safetensors`` file or an HF folder.

    Returns the state dict and a short content id (a hash of the file's bytes, or of
    the HF folder's weights) for cache keys.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        return _read_hf_folder(path)
    if path.suffix == ".safetensors":
        sd = _read_safetensors([path])
        return _from_hf_or_official(sd), _file_id(path)
    sd = _read_pth(path)
    return _from_hf_or_official(sd), _file_id(path)


def encoder_id(sd: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits identifying the image encoder's weights (``image_encoder.*``): the key of
    stored embeddings, which depend on nothing else, so a checkpoint whose decoder was adapted
    reuses them. Each tensor contributes its name, shape, dtype and its values (tensors above
    65536 values by 65536 evenly strided ones: any dense change of a weight, as training
    makes, changes them; hashing all of vit_h would cost seconds per load)."""
    h = hashlib.sha256()
    for name in sorted(k for k in sd if k.startswith("image_encoder.")):
        t = sd[name].detach().reshape(-1)
        if t.numel() > 65536:
            t = t[:: t.numel() // 65536][:65536]
        h.update(f"{name}|{tuple(sd[name].shape)}|{sd[name].dtype}|".encode())
        h.update(t.to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _file_id(path: Path) -> str:
    """First 16 hex digits of the file's sha256 (streamed)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _read_pth(path: Path) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises many types (IndexError, EOFError, ...) on bad bytes
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({reason}). It may be truncated by an "
            "interrupted download, or not a checkpoint at all: delete it and download it again."
        ) from err
    if isinstance(obj, Mapping) and not _looks_like_state_dict(obj):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not _looks_like_state_dict(obj):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict of tensors; "
            "expected an official SAM-HQ checkpoint such as sam_hq_vit_b.pth"
        )
    return dict(obj)


def _looks_like_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_safetensors(files: list[Path]) -> StateDict:
    try:
        from safetensors.torch import load_file
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            "reading a Hugging Face checkpoint needs the 'safetensors' package: "
            "pip install safetensors"
        ) from err
    sd: StateDict = {}
    for f in files:
        try:
            sd.update(load_file(str(f)))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(
                f"{f} is not a readable safetensors file ({err}); it may be truncated: "
                "download it again"
            ) from err
    return sd


def _read_hf_folder(folder: Path) -> tuple[StateDict, str]:
    config = folder / "config.json"
    if not config.exists():
        raise CheckpointError(
            f"{folder} is a folder without config.json; a Hugging Face checkpoint folder holds "
            "config.json and model.safetensors (as SamHQModel.save_pretrained writes them)"
        )
    cfg = json.loads(config.read_text())
    if cfg.get("model_type") != "sam_hq":
        kind = cfg.get("model_type", "unknown")
        hint = ""
        if kind == "sam":
            hint = " (plain SAM, not SAM-HQ: use a SAM-HQ checkpoint such as syscv-community/sam-hq-vit-base)"
        raise CheckpointError(f"{folder}/config.json describes model_type {kind!r}, not 'sam_hq'{hint}")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    else:
        raise CheckpointError(f"{folder} has config.json but no model.safetensors")
    sd = _from_hf_or_official(_read_safetensors(files))
    h = hashlib.sha256()
    for f in files:
        h.update(_file_id(f).encode())
    return sd, h.hexdigest()[:16]


def _from_hf_or_official(sd: StateDict) -> StateDict:
    if any(k.startswith("vision_encoder.") for k in sd):
        return hf_to_official(sd)
    return sd


# --------------------------------------------------------------------------- HF mapping

_HF_RULES: list[tuple[str, str]] = [
    # vision encoder
    (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^vision_encoder\.pos_embed$", "image_encoder.pos_embed"),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm([12])\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^vision_encoder\.layers\.(\d+)\.", r"image_encoder.blocks.\1."),
    (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    # prompt encoder
    (r"^shared_image_embedding\.positional_embedding$",
     "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    # two-way transformer
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.layer_norm(\d)\.", r"\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    # decoder heads
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    (r"^mask_decoder\.hq_token\.", "mask_decoder.hf_token."),
    (r"^mask_decoder\.hq_mask_mlp\.", "mask_decoder.hf_mlp."),
    (r"^mask_decoder\.compress_vit_conv1\.", "mask_decoder.compress_vit_feat.0."),
    (r"^mask_decoder\.compress_vit_norm\.", "mask_decoder.compress_vit_feat.1."),
    (r"^mask_decoder\.compress_vit_conv2\.", "mask_decoder.compress_vit_feat.3."),
    (r"^mask_decoder\.encoder_conv1\.", "mask_decoder.embedding_encoder.0."),
    (r"^mask_decoder\.encoder_norm\.", "mask_decoder.embedding_encoder.1."),
    (r"^mask_decoder\.encoder_conv2\.", "mask_decoder.embedding_encoder.3."),
    (r"^mask_decoder\.mask_conv1\.", "mask_decoder.embedding_maskfeature.0."),
    (r"^mask_decoder\.mask_norm\.", "mask_decoder.embedding_maskfeature.1."),
    (r"^mask_decoder\.mask_conv2\.", "mask_decoder.embedding_maskfeature.3."),
]
_HF_RULES_RE = [(re.compile(a), b) for a, b in _HF_RULES]
# HF MLPs name their layers proj_in, layers.0..n-3, proj_out; ours are layers.0..n-1.
_HF_MLP = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|hf_mlp))"
    r"\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$"
)
# Copies of tied weights that HF may save besides the one we map.
_HF_TIED = ("prompt_encoder.shared_embedding.positional_embedding",)


def hf_to_official(hf: StateDict) -> StateDict:
    """Rename a ``SamHQModel`` state dict to the official SAM-HQ names."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        if key in _HF_TIED:
            continue
        new = key
        for pattern, repl in _HF_RULES_RE:
            new = pattern.sub(repl, new)
        renamed[new] = value
    if "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" not in renamed:
        for tied in _HF_TIED:
            if tied in hf:
                renamed["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = hf[tied]
    # MLP layer numbering needs each MLP's depth.
    depth: dict[str, int] = {}
    for key in renamed:
        m = _HF_MLP.match(key)
        if m and m.group(3) is not None:
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(3)) + 1)
    out: StateDict = {}
    for key, value in renamed.items():
        m = _HF_MLP.match(key)
        if m:
            base, part, hidden, kind = m.group(1), m.group(2), m.group(3), m.group(4)
            if part == "proj_in":
                idx = 0
            elif part == "proj_out":
                idx = depth.get(base, 0) + 1
            else:
                idx = int(hidden) + 1
            key = f"{base}.layers.{idx}.{kind}"
        out[key] = value
    return out


# --------------------------------------------------------------------------- detection


def detect_spec(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> ModelSpec:
    """The model size a state dict belongs to, from its keys and shapes."""
    keys = set(sd)
    has_encoder = any(k.startswith("image_encoder.") for k in keys)
    has_decoder = any(k.startswith("mask_decoder.") for k in keys)
    has_hq = any(k.startswith(HQ_PREFIXES) for k in keys)
    if has_encoder and has_decoder and not has_hq:
        raise CheckpointError(
            f"{source} is a SAM checkpoint, not SAM-HQ: it has no HQ decoder weights "
            "(mask_decoder.hf_token, hf_mlp, compress_vit_feat, ...). Use the SAM-HQ "
            "checkpoint of the same size instead (e.g. sam_hq_vit_b.pth, or load_model('vit_b'))."
        )
    if has_hq and not has_encoder:
        raise CheckpointError(
            f"{source} holds only HQ decoder weights, no image encoder (a training "
            "checkpoint?). Use a full SAM-HQ checkpoint such as sam_hq_vit_b.pth."
        )
    if not (has_encoder and has_decoder):
        sample = ", ".join(sorted(keys)[:5])
        raise CheckpointError(
            f"{source} is not a SAM-HQ checkpoint: it has no image_encoder/mask_decoder "
            f"weights (first keys: {sample})"
        )
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return _detect_tiny(sd)
    return _detect_vit(sd, source)


def _detect_vit(sd: Mapping[str, torch.Tensor], source: str) -> ModelSpec:
    pos = sd.get("image_encoder.pos_embed")
    if pos is None:
        raise CheckpointError(f"{source}: image_encoder.pos_embed is missing; not a SAM-HQ ViT checkpoint")
    embed_dim = int(pos.shape[-1])
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    rel = {i: sd.get(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)}
    grid = int(pos.shape[1])
    global_idx = tuple(i for i, t in rel.items() if t is not None and t.shape[0] == 2 * grid - 1)
    head_dim = next((int(t.shape[1]) for t in rel.values() if t is not None), 0)
    num_heads = embed_dim // head_dim if head_dim else 0
    found = ViTSpec(embed_dim, depth, num_heads, global_idx)
    for spec in MODEL_SPECS.values():
        if spec.encoder == found:
            return spec
    if not global_idx or not num_heads:
        raise CheckpointError(f"{source}: cannot read the ViT layout (depth {depth}, width {embed_dim})")
    return ModelSpec(f"vit_custom_{embed_dim}x{depth}", found)


def _detect_tiny(sd: Mapping[str, torch.Tensor]) -> ModelSpec:
    dims, depths, heads, windows = [], [], [], []
    for stage in range(4):
        prefix = f"image_encoder.layers.{stage}.blocks."
        blocks = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
        depths.append(len(blocks))
        if stage == 0:
            dims.append(int(sd[f"{prefix}0.conv1.c.weight"].shape[1]))
            heads.append(TinyViTSpec().num_heads[0])
            windows.append(TinyViTSpec().window_sizes[0])
            continue
        biases = sd[f"{prefix}0.attn.attention_biases"]
        dims.append(int(sd[f"{prefix}0.attn.proj.weight"].shape[0]))
        heads.append(int(biases.shape[0]))
        # A w x w window has w*w distinct |offsets| -> number of bias columns.
        windows.append(int(round(biases.shape[1] ** 0.5)))
    found = TinyViTSpec(tuple(dims), tuple(depths), tuple(heads), tuple(windows))  # type: ignore[arg-type]
    if found == MODEL_SPECS["vit_tiny"].encoder:
        return MODEL_SPECS["vit_tiny"]
    return ModelSpec("vit_tiny_custom", found)


# --------------------------------------------------------------------------- loading


def load_into(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str, *, assign: bool = False
) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what is wrong.

    With ``assign`` the model's tensors become the state dict's (a model built on the
    ``meta`` device then costs no second copy of the weights) and the constant buffers
    checkpoints do not hold are rebuilt.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if sd[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError(
            f"{source} does not fit the {getattr(model, 'name', 'model')} architecture; "
            + "; ".join(parts)
        )
    model.load_state_dict(sd, strict=True, assign=assign)
    if assign:
        for module in model.modules():
            init = getattr(module, "init_buffers", None)
            if callable(init):
                init()

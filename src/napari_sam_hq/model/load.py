"""``load_model``: a SAM-HQ model from a registry name, a checkpoint file or an HF folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from .build import build_sam_hq, place, prepare_for_inference
from .checkpoints import CheckpointError, detect_spec, encoder_id, load_into, read_state_dict
from .download import Progress, checkpoint_path
from .registry import CHECKPOINTS
from .sam_hq import SamHQ


class _NoInit(TorchFunctionMode):
    """Skips ``torch.nn.init``'s fills (and makes ``randn``/``rand`` empty) while a model
    whose weights and buffers a checkpoint will replace is built on the ``meta`` device. There
    they run torch's Python reference ops, whose first call imports ``torch._dynamo``: 1.0-1.4 s
    of every command's start, for values thrown away. A mode holds for the thread that enters
    it only."""

    SKIP = frozenset(getattr(torch.nn.init, name) for name in (
        "normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
        "xavier_normal_", "zeros_", "ones_", "constant_", "orthogonal_"))

    RANDOM = frozenset((torch.randn, torch.rand))  # random buffers (the prompt encoder's Fourier matrix)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SKIP:
            return args[0] if args else kwargs["tensor"]
        if func in self.RANDOM:
            kwargs.pop("generator", None)
            return torch.empty(*args, **kwargs)
        return func(*args, **kwargs)


def load_model(
    name_or_path: str | Path,
    device: str | torch.device = "auto",
    *,
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> SamHQ:
    """A SAM-HQ model with loaded weights, in eval mode, on ``device``.

    ``name_or_path``: a registry name (``vit_b``, ``vit_l``, ``vit_h``, ``vit_tiny``;
    downloaded once into the cache), an official ``.pth`` file, a ``.safetensors`` file
    or a Hugging Face folder. The size is detected from the weights themselves. ``dtype``:
    by default float32 on the CPU, float16 on GPUs (``build.default_dtype``).
    """
    path = checkpoint_path(name_or_path, progress=progress)
    if not path.exists():
        raise CheckpointError(
            f"{str(name_or_path)!r} is neither a model name ({', '.join(CHECKPOINTS)}) nor an existing file or folder"
        )
    sd, content_id = read_state_dict(path)
    spec = detect_spec(sd, source=str(path))
    with torch.device("meta"), _NoInit():  # no random init, no second copy of the weights
        model = build_sam_hq(spec)
    load_into(model, sd, source=str(path), assign=True)
    model.checkpoint_id = encoder_id(sd)  # what embeddings depend on (an adapted decoder keeps it)
    model.file_id = content_id
    return place(prepare_for_inference(model), device=device, dtype=dtype)

"""The SAM-HQ model: image encoder, prompt encoder and HQ mask decoder."""

from __future__ import annotations

from collections.abc import Generator

import torch
import torch.nn.functional as F
from torch import nn

from .common import exhaust
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoderHQ
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class SamHQ(nn.Module):
    """Container with the official module names, so official checkpoints load strictly.

    ``name`` is the registry name of the size (``vit_b`` ...); ``checkpoint_id`` says
    which image-encoder weights were loaded (``checkpoints.encoder_id``, or ``"random"``):
    the key of stored embeddings, which a checkpoint with an adapted decoder shares;
    ``file_id`` is the hash of the file loaded (``None`` when built in code).
    """

    mask_threshold: float = 0.0

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT | TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoderHQ,
        name: str = "custom",
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.name = name
        self.checkpoint_id = "random"
        self.file_id: str | None = None
        self.register_buffer("pixel_mean", torch.empty(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.empty(3, 1, 1), persistent=False)
        self.init_buffers()
        self._inference_pe: tuple | None = None  # (key, dense pe): inference_pe

    def init_buffers(self) -> None:
        """(Re)compute the constant buffers that checkpoints do not hold."""
        device = self.pixel_mean.device if not self.pixel_mean.is_meta else torch.device("cpu")
        self.pixel_mean = torch.tensor(PIXEL_MEAN, device=device).view(-1, 1, 1)
        self.pixel_std = torch.tensor(PIXEL_STD, device=device).view(-1, 1, 1)

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mask_decoder.iou_token.weight.dtype

    def inference_pe(self) -> torch.Tensor:
        """The positional encoding of the embedding grid, ``1 x C x h x w``, computed once (in
        inference mode) and shared by every predictor of this model: 4 MB each, and a
        session keeps up to ten decoder-ready tiles. (Its memory is laid out as rows ``hw x C``,
        so the transformer's view of it as rows shares it too.)

        Computed again when the encoding's random matrix, its device or its dtype changes
        (new weights, ``.to()``). Read-only: nobody may write into it.
        """
        gauss = self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        # the matrix itself (2 x 128) is the key: a version counter misses loads under
        # inference mode, which does not track versions
        with torch.inference_mode():
            key = (gauss.device, gauss.dtype, gauss.detach().float().cpu().numpy().tobytes())
            cached = self._inference_pe
            if cached is None or cached[0] != key:
                cached = self._inference_pe = (key, self.prompt_encoder.get_dense_pe())
        return cached[1]

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x h x w`` RGB in [0, 255], model-input frame -> normalised ``B x 3 x 1024 x 1024``.

        Normalisation happens before the zero padding, as in the official code.
        """
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    @property
    def num_encode_steps(self) -> int:
        return self.image_encoder.num_steps + 1

    def iter_encode(
        self, x: torch.Tensor
    ) -> Generator[int, None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Everything that depends on the image only, one encoder step at a time.

        ``B x 3 x h x w`` in [0, 255] (model-input frame) -> image embedding
        ``B x 256 x 64 x 64``, early feature ``B x 64 x 64 x Cv`` and HQ features
        ``B x 32 x 256 x 256``. Yields the steps done out of ``num_encode_steps``.
        """
        steps = self.image_encoder.iter_forward(self.preprocess(x.to(self.dtype)))
        del x  # the input is let go once normalised (12 MB at 1024 x 1024) if the caller lets go too
        embedding, early = yield from steps
        hq = self.mask_decoder.hq_features(embedding, early)
        yield self.num_encode_steps
        return embedding, early, hq

    def encode_many(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``encode`` of several images in one encoder call (throughput on GPUs): each
        ``3 x h x w`` in [0, 255] (model-input frame; sizes may differ) is normalised and
        padded on its own, then the batch ``B x 3 x 1024 x 1024`` is encoded."""
        x = torch.cat([self.preprocess(im[None].to(self.dtype)) for im in images])
        embedding, early = self.image_encoder(x)
        return embedding, early, self.mask_decoder.hq_features(embedding, early)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``iter_encode`` run to the end."""
        return exhaust(self.iter_encode(x))

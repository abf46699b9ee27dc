"""``SamHQPredictor``: set an image once, then ask for masks from prompts, many times.

``set_image`` computes everything that depends only on the image (the image embedding,
the early ViT feature and the HQ features); ``predict`` and ``predict_batch`` run only
the prompt encoder and the decoder. Coordinates are (x, y) pixels of the original image,
boxes XYXY; see ``transforms`` for the frames and the intensity rules.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ...model.common import exhaust
from ...model.sam_hq import SamHQ
from .embedding import ImageEmbedding
from .transforms import LOW_RES, Frames, model_image

# Prompts per decoder call. The transformer runs them as one batch (4 MB per prompt and
# tensor); the mask heads take one prompt at a time anyway. Measured with vit_b on 2 cores:
# 4 points per call ran fastest for predict_logits (64 points: 2.8 s; 8 per call: 3.3 s,
# once tensors crossed glibc's 32 MB mmap threshold), and 2 for predict_batch, which also
# upsamples every mask to full size (50 boxes: 2.2-2.35 s; 4 per call: 2.4-2.5 s).
DECODE_CHUNK = 4
MASK_CHUNK = 2
# On a GPU a call costs launches, not memory traffic: many prompts per call.
GPU_CHUNK = 64


@dataclass(frozen=True)
class Prediction:
    """Masks for one prompt: ``N`` candidates, best first.

    ``masks`` N x H x W bool (original frame); ``scores`` N (predicted IoU);
    ``low_res_logits`` N x 256 x 256 (feed one back as ``mask_input``).
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


@dataclass(frozen=True)
class BatchPrediction:
    """Masks for ``B`` prompts: ``masks`` B x N x H x W, ``scores`` B x N, ``low_res_logits`` B x N x 256 x 256."""

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, i: int) -> Prediction:
        return Prediction(self.masks[i], self.scores[i], self.low_res_logits[i])


class SamHQPredictor:
    """Interactive SAM-HQ on one image at a time.

    >>> predictor = SamHQPredictor(load_model("vit_b"))
    >>> predictor.set_image(image)
    >>> result = predictor.predict(point_coords=[[120, 80]], point_labels=[1])
    >>> result.masks[0]  # H x W bool
    """

    def __init__(self, model: SamHQ) -> None:
        self.model = model
        self._dense_pe = model.inference_pe()  # shared by the model's predictors
        self.reset_image()

    # ------------------------------------------------------------------ image

    def reset_image(self) -> None:
        self._frames: Frames | None = None
        self._embedding: torch.Tensor | None = None
        self._early: torch.Tensor | None = None
        self._hq: torch.Tensor | None = None
        self._image_tokens = None  # transformer image side without a mask prompt

    @property
    def is_image_set(self) -> bool:
        return self._frames is not None

    @property
    def original_size(self) -> tuple[int, int]:
        return self._require_image().original_size

    def iter_set_image(
        self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None, keep_early: bool = True
    ) -> Generator[float, None, None]:
        """``set_image`` as a generator: yields the fraction done (0-1) after each encoder step.

        Stopping the generator early leaves the predictor without an image, never half set.
        ``keep_early=False`` lets go of the encoder's early feature once the HQ features are
        made from it (``get_image_embedding(early=True)`` then has none): the decoder does
        not need it, and it is 2.5 MB (vit_tiny) to 12 MB (vit_b) of every predictor a
        session keeps decoder-ready.
        """
        self.reset_image()
        x, frames = self._model_input(image, contrast_limits)
        model = self.model
        with torch.inference_mode():
            steps = model.iter_encode(x[None])
            del x  # the encoder holds its input only until it is normalised
            total = model.num_encode_steps
            try:
                while True:
                    yield next(steps) / total
            except StopIteration as stop:
                embedding, early, hq = stop.value
        self._set_state(embedding, early if keep_early else None, hq, frames)

    def embed_batch(
        self, images: list[np.ndarray], *, contrast_limits: list[tuple[float, float] | None] | None = None
    ) -> list[ImageEmbedding]:
        """The embeddings of several images (each H x W or H x W x C, sizes may differ) from one
        encoder call: slices of a stack per call on a GPU. The predictor's own image is left
        as it was."""
        limits = contrast_limits or [None] * len(images)
        tensors, sizes = zip(*(self._model_input(im, lim) for im, lim in zip(images, limits, strict=True)),
                             strict=True)
        with torch.inference_mode():
            embedding, early, hq = self.model.encode_many(list(tensors))
        return [self._embedding_of(embedding[i : i + 1], None, hq[i : i + 1], frames)
                for i, frames in enumerate(sizes)]

    def _model_input(self, image: np.ndarray, contrast_limits) -> tuple[torch.Tensor, Frames]:
        """``image`` as the encoder's input ``3 x h x w`` (RGB 0-255, longest side 1024) on the
        model's device, and its frames. On CUDA it travels from pinned memory without blocking."""
        pixels = model_image(image, contrast_limits=contrast_limits)  # checks the image
        image = np.asarray(image)
        frames = Frames.for_image(image.shape[0], image.shape[1])
        t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        pin = self.model.device.type == "cuda"
        if pin:
            t = t.pin_memory()
        # h w 3 -> 3 h w
        return t.to(self.model.device, non_blocking=pin).permute(2, 0, 1), frames

    def _set_state(self, embedding: torch.Tensor, early: torch.Tensor, hq: torch.Tensor, frames: Frames) -> None:
        decoder, prompt_encoder = self.model.mask_decoder, self.model.prompt_encoder
        with torch.inference_mode():
            # the same 1 x C x h x w values, stored as rows hw x C: the prepared image tokens
            # are those rows (plus the "no mask" offset where used), so they share its 4 MB
            embedding = embedding.flatten(2).transpose(1, 2).contiguous().transpose(1, 2).unflatten(
                2, embedding.shape[-2:])
            tokens = decoder.prepare_image(embedding, self._dense_pe, prompt_encoder.no_mask_dense())
        self._embedding, self._early, self._hq, self._frames = embedding, early, hq, frames
        self._image_tokens = tokens

    def set_image(
        self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None, keep_early: bool = True
    ) -> None:
        """Compute the image embedding of ``image`` (H x W, H x W x C; any real dtype);
        ``keep_early`` as in ``iter_set_image``."""
        exhaust(self.iter_set_image(image, contrast_limits=contrast_limits, keep_early=keep_early))

    def get_image_embedding(
        self, *, dtype: np.dtype | type = np.float32, early: bool = True, hq: bool = True
    ) -> ImageEmbedding:
        """The current image's embedding; ``early`` / ``hq`` choose which features to include."""
        frames = self._require_image()
        if not (early or hq):
            raise ValueError("include the early feature, the HQ features or both")
        return self._embedding_of(self._embedding, self._early if early else None, self._hq if hq else None,
                                  frames, dtype=dtype)

    def _embedding_of(self, embedding, early, hq, frames: Frames, *, dtype=np.float32) -> ImageEmbedding:
        def array(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else np.ascontiguousarray(t.float().cpu().numpy(), dtype=dtype)

        return ImageEmbedding(
            image_embedding=array(embedding),
            early_feature=array(early),
            original_size=frames.original_size,
            input_size=frames.input_size,
            model_name=self.model.name,
            checkpoint_id=self.model.checkpoint_id,
            hq_features=array(hq),
        )

    def set_image_embedding(self, emb: ImageEmbedding) -> None:
        """Use an embedding computed earlier (by this model) instead of ``set_image``."""
        model = self.model
        if (emb.model_name, emb.checkpoint_id) != (model.name, model.checkpoint_id):
            raise ValueError(
                f"this embedding was computed by {emb.model_name} (weights {emb.checkpoint_id}); "
                f"the predictor runs {model.name} (weights {model.checkpoint_id}): recompute it "
                "with set_image"
            )
        vit_dim = model.mask_decoder.compress_vit_feat[0].in_channels
        expected = {
            "image_embedding": (emb.image_embedding, (1, 256, 64, 64)),
            "early_feature": (emb.early_feature, (1, 64, 64, vit_dim)),
            "hq_features": (emb.hq_features, (1, 32, 256, 256)),
        }
        if emb.early_feature is None and emb.hq_features is None:
            raise ValueError("the embedding has neither early_feature nor hq_features: recompute it with set_image")
        for name, (array, shape) in expected.items():
            if array is not None and tuple(array.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(array.shape)}, the model needs {shape}")
        frames = Frames.for_image(*emb.original_size)
        if frames.input_size != tuple(emb.input_size):
            raise ValueError(f"input size {emb.input_size} does not follow from {emb.original_size}")
        self.reset_image()
        def tensor(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.as_tensor(array, device=model.device).to(model.dtype)

        with torch.inference_mode():
            embedding, early, hq = (tensor(a) for a in (emb.image_embedding, emb.early_feature, emb.hq_features))
            if hq is None:
                hq = model.mask_decoder.hq_features(embedding, early)
        self._set_state(embedding, early, hq, frames)

    # ------------------------------------------------------------------ prompts

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = False,
        hq_token_only: bool = False,
    ) -> Prediction:
        """Masks for one object.

        ``point_coords`` N x 2 (x, y) pixels with ``point_labels`` N (1 foreground, 0
        background); ``box`` 4 XYXY pixels; ``mask_input`` 256 x 256 low-res logits from
        an earlier prediction. At least one prompt is needed.
        """
        coords = None if point_coords is None else np.asarray(point_coords, dtype=np.float64)[None]
        labels = None if point_labels is None else np.asarray(point_labels)[None]
        boxes = None if box is None else np.asarray(box, dtype=np.float64).reshape(1, -1)
        masks = None if mask_input is None else np.asarray(mask_input)[None]
        return self.predict_batch(
            point_coords=coords,
            point_labels=labels,
            boxes=boxes,
            mask_input=masks,
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
        )[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = False,
        hq_token_only: bool = False,
        windows: np.ndarray | None = None,
    ) -> BatchPrediction:
        """Masks for ``B`` objects at once: ``point_coords`` B x N x 2, ``point_labels`` B x N,
        ``boxes`` B x 4, ``mask_input`` B x 256 x 256 (any subset; B must agree).

        ``windows`` B x 4 XYXY pixels, where the caller knows each object lies (a box
        around an instance head's object): its masks are computed there only and are
        empty outside (inside, the same as without a window). On a CPU most of a prompt's
        cost is its mask heads at 256 x 256, so a cell-sized window makes it several times
        cheaper. ``low_res_logits`` hold ``OUTSIDE_LOGIT`` away from the window.
        """
        frames = self._require_image()
        coords, labels, boxes_in, masks_in, b = _check_prompts(
            frames, point_coords, point_labels, boxes, mask_input
        )
        pixels = cells = None
        if windows is not None:
            win = _check_xyxy(windows, "windows")
            if len(win) != b or not np.isfinite(win).all():
                raise ValueError(f"windows must be B x 4 XYXY pixels with B = {b} (one per object), got {win.shape}")
            pixels = frames.window_pixels(win)
            cells = frames.window_cells(pixels)
        model = self.model
        out_masks, out_scores, out_low = [], [], []
        step = MASK_CHUNK if model.device.type == "cpu" else GPU_CHUNK
        with torch.inference_mode():
            for s in range(0, b, step):
                sl = slice(s, min(b, s + step))
                sparse, dense, mask_t = self._encode_prompts(frames, coords, labels, boxes_in, masks_in, sl)
                logits, scores = model.mask_decoder(
                    self._embedding,
                    self._dense_pe,
                    sparse,
                    dense,
                    self._hq,
                    multimask_output=multimask_output,
                    hq_token_only=hq_token_only,
                    image_tokens=self._image_tokens if mask_t is None else None,
                    windows=None if cells is None else torch.from_numpy(cells[sl]),
                )
                masks = frames.masks_to_original(logits.float(), model.mask_threshold).cpu().numpy()
                if pixels is not None:  # empty outside the window (the cells reach a little past it)
                    for m, (r0, r1, c0, c1) in zip(masks, pixels[sl].tolist(), strict=True):
                        m[:, :r0] = False
                        m[:, r1:] = False
                        m[:, :, :c0] = False
                        m[:, :, c1:] = False
                out_masks.append(masks)
                out_scores.append(scores.float().cpu().numpy())
                out_low.append(logits.float().cpu().numpy())
        return BatchPrediction(
            masks=np.concatenate(out_masks),
            scores=np.concatenate(out_scores),
            low_res_logits=np.concatenate(out_low),
        )

    def _encode_prompts(self, frames, coords, labels, boxes, masks, sl):
        """Prompt embeddings for prompts ``sl`` of validated arrays (original frame)."""
        model = self.model
        dev, dtype = model.device, model.dtype
        points = None
        if coords is not None:
            points = (
                torch.as_tensor(frames.coords_to_input(coords[sl]), dtype=torch.float32, device=dev),
                torch.as_tensor(labels[sl], dtype=torch.int64, device=dev),
            )
        box_t = None
        if boxes is not None:
            box_t = torch.as_tensor(frames.boxes_to_input(boxes[sl]), dtype=torch.float32, device=dev)
        mask_t = None
        if masks is not None:
            mask_t = torch.as_tensor(masks[sl], device=dev).to(dtype)[:, None]
        sparse, dense = model.prompt_encoder(points, box_t, mask_t)
        if mask_t is None:
            dense = dense[:1]  # the constant "no mask" embedding serves every prompt
        return sparse.to(dtype), dense, mask_t

    def predict_logits(
        self,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        *,
        min_score: float = -np.inf,
        multimask_output: bool = True,
        hq_token_only: bool = False,
        chunk: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Low-res logits of many point prompts, keeping only those scored above ``min_score``.

        ``point_coords`` B x N x 2 (x, y) original pixels, ``point_labels`` B x N. Returns
        the best candidate's logits ``K x 256 x 256`` (float32 torch, on the model's device),
        its score ``K`` and the kept prompt indices ``K``. With ``multimask_output`` the best
        of the three SAM masks (+ HQ) is taken, which is the official single output. Prompts
        scored at most ``min_score`` skip the mask heads altogether (most of their cost).
        """
        frames = self._require_image()
        coords, labels, _, _, b = _check_prompts(frames, point_coords, point_labels, None, None)
        model = self.model
        logits_out, scores_out, kept = [], [], []
        chunk = chunk or (DECODE_CHUNK if model.device.type == "cpu" else GPU_CHUNK)
        with torch.inference_mode():
            for s in range(0, b, chunk):
                sl = slice(s, min(b, s + chunk))
                sparse, dense, _ = self._encode_prompts(frames, coords, labels, None, None, sl)
                logits, scores, keep = model.mask_decoder.forward_filtered(
                    self._embedding, self._dense_pe, sparse, dense, self._hq,
                    multimask_output=multimask_output, hq_token_only=hq_token_only,
                    min_score=min_score, image_tokens=self._image_tokens,
                )
                logits_out.append(logits[:, 0].float())
                scores_out.append(scores[:, 0].float())
                kept.append(keep.cpu().numpy() + s)
        return torch.cat(logits_out), torch.cat(scores_out), np.concatenate(kept)

    def _require_image(self) -> Frames:
        if self._frames is None:
            raise RuntimeError("no image is set: call set_image(image) (or set_image_embedding) first")
        return self._frames


def _check_prompts(
    frames: Frames,
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    boxes: np.ndarray | None,
    mask_input: np.ndarray | None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None, int]:
    """Validate batched prompts in the original frame; returns them as arrays and B."""
    h, w = frames.original_size
    sizes = []
    coords = labels = boxes_arr = masks = None
    if point_coords is not None or point_labels is not None:
        if point_coords is None or point_labels is None:
            raise ValueError("point_coords and point_labels go together: give both or neither")
        coords = np.asarray(point_coords, dtype=np.float64)
        labels = np.asarray(point_labels)
        if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
            raise ValueError(f"point_coords must be B x N x 2 (x, y) with N >= 1, got shape {coords.shape}")
        if labels.shape != coords.shape[:2]:
            raise ValueError(f"point_labels must be B x N = {coords.shape[:2]}, got shape {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("point_labels must be 1 (foreground) or 0 (background)")
        labels = labels.astype(np.int64)
        _check_inside(coords, h, w, "point")
        sizes.append(coords.shape[0])
    if boxes is not None:
        boxes_arr = _check_xyxy(boxes, "boxes")
        _check_inside(boxes_arr.reshape(-1, 2, 2), h, w, "box corner")
        sizes.append(boxes_arr.shape[0])
    if mask_input is not None:
        masks = np.asarray(mask_input, dtype=np.float32)
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.ndim != 3 or masks.shape[1:] != (LOW_RES, LOW_RES):
            raise ValueError(
                f"mask_input must be B x 256 x 256 low-res logits (a previous low_res_logits), got {masks.shape}"
            )
        sizes.append(masks.shape[0])
    if not sizes:
        raise ValueError("give at least one prompt: points, a box or a mask_input")
    if len(set(sizes)) != 1:
        raise ValueError(f"points, boxes and mask_input must describe the same number of objects, got {sizes}")
    if sizes[0] == 0:
        raise ValueError("no prompts: the batch is empty")
    return coords, labels, boxes_arr, masks, sizes[0]


def _check_xyxy(boxes: np.ndarray, what: str) -> np.ndarray:
    """``boxes`` (or windows) as ``B x 4`` float64 XYXY with x0 <= x1 and y0 <= y1."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[-1] != 4:
        raise ValueError(f"{what} must be B x 4 XYXY, got shape {arr.shape}")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"{what} must be XYXY with x0 <= x1 and y0 <= y1 (x is the column)")
    return arr


def _check_inside(xy: np.ndarray, h: int, w: int, what: str) -> None:
    """(x, y) must lie on the image: pixel centres are integers, edges at -0.5 and size - 0.5."""
    if not np.isfinite(xy).all():
        raise ValueError(f"{what} coordinates must be finite numbers")
    x, y = xy[..., 0], xy[..., 1]
    tol = 1e-6
    outside = (x < -0.5 - tol) | (x > w - 0.5 + tol) | (y < -0.5 - tol) | (y > h - 0.5 + tol)
    if outside.any():
        bad = xy[outside][0]
        raise ValueError(
            f"{what} at (x={bad[0]:g}, y={bad[1]:g}) lies outside the {w} x {h} image "
            "(x is the column, y the row)"
        )

"""Adapting SAM-HQ's decoder to a lab's images: training on stored embeddings.

What is trained (``TrainSettings.train``):

- ``"hq"`` (default): the HQ output token ``hf_token``, its hypernetwork ``hf_mlp`` and
  the mask-feature branch ``embedding_maskfeature``. These act *after* the prompt-
  independent HQ features (``embedding_encoder(embedding) + compress_vit_feat(early ViT
  feature)``) that the embedding store keeps, so every stored embedding stays valid and
  the early ViT feature (which the store does not keep) is never needed. The two branches
  that make those features are frozen: training them would invalidate the stored
  features and need every image encoded again.
- ``"decoder"``: the whole mask decoder except those two branches (adds the two-way
  transformer and the single-mask SAM head; the loss then also covers the default output,
  SAM + HQ).

Never the image encoder, so stored image embeddings stay valid for the adapted model.

Frames: an object is an ``H x W`` bool mask on an image of ``original_size``; prompts are
drawn from it in original (x, y) pixels and mapped to the model input as the predictor
does; the loss compares the HQ mask logits (``256 x 256``, the model-input frame / 4)
with the object's mask in that frame (area-resized), over the part of the grid the image
covers. Loss: binary cross-entropy + Dice, as HQ-SAM's training.

Prompts per object and step (``TrainSettings.prompts``), as the official training: a
``box`` (jittered by up to 10% of its side), or 1-3 positive and 0-2 negative ``points``,
or the object's ``mask``, eroded or dilated and noised, as the mask input (with its box);
and ``refine``: what ``refine`` gives a user's imperfect label (its box, its innermost
point and its noised mask, all from the eroded or dilated mask), to adapt a model for
refining label images. Held out: each object with one fixed prompt of the trained kinds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..masks import object_slices
from ..prediction.embedding import ImageEmbedding
from ..prediction.transforms import Frames
from .prompts import LOW, RefineSettings, low_res, mask_to_logits, object_prompts

HQ_PARTS = ("hf_token", "hf_mlp", "embedding_maskfeature")
FEATURE_PARTS = ("compress_vit_feat", "embedding_encoder")  # make the stored HQ features: frozen
PROMPT_KINDS = ("box", "points", "mask", "refine")
PATIENCE_SHARE = 0.3  # of the time budget without a held-out gain, beside `patience` evaluations
MIN_STALE_STEPS = 60  # without a budget: steps without a gain, beside `patience` epochs
WARMUP_STEPS = 10


@dataclass(frozen=True)
class TrainSettings:
    """How to train (module notes). ``minutes``: a time budget that the run uses (``epochs``
    then no longer limit it); without one, ``epochs`` passes. The learning rate warms up over
    the first steps, stays, and anneals over the last 30% of the run. Training stops early only when the
    held-out IoU has clearly stopped improving: no gain for ``patience`` evaluations *and*
    for ``PATIENCE_SHARE`` of the time budget (or, without a budget, ``MIN_STALE_STEPS``
    steps). ``TrainResult.stopped`` says why it stopped."""

    train: str = "hq"
    epochs: int = 20
    minutes: float | None = None
    lr: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    batch_objects: int = 8
    steps_per_epoch: int | None = None  # default: every training object once per epoch
    patience: int = 4
    prompts: tuple[str, ...] = ("box", "points", "mask")

    def __post_init__(self) -> None:
        problems = []
        if not self.prompts or set(self.prompts) - set(PROMPT_KINDS):
            problems.append(f"prompts must be some of {', '.join(map(repr, PROMPT_KINDS))}, got {self.prompts}")
        if self.train not in ("hq", "decoder"):
            problems.append(f"train must be 'hq' or 'decoder', got {self.train!r}")
        if self.epochs < 1 or self.batch_objects < 1 or self.patience < 1:
            problems.append("epochs, batch_objects and patience must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.minutes is not None and self.minutes <= 0:
            problems.append(f"minutes must be positive, got {self.minutes}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class TrainingImage:
    """One image's stored embedding and its objects (``H x W`` bool masks, original frame).
    ``boxes`` (XYXY, one per object, optional): the box that prompts each object, default
    its mask's bounding box."""

    embedding: ImageEmbedding
    objects: list[np.ndarray]
    name: str = ""
    boxes: list[np.ndarray] | None = None


def objects_from_labels(labels: np.ndarray, *, min_area: int = 10) -> list[np.ndarray]:
    """The objects of an ``H x W`` integer label image as bool masks (ids ascending; objects
    smaller than ``min_area`` pixels are left out)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}: a label image, not a probability map")
    out = []
    for i, sl in object_slices(labels):
        mask = np.zeros(labels.shape, bool)
        mask[sl] = labels[sl] == i
        if mask.sum() >= min_area:
            out.append(mask)
    return out


@dataclass(frozen=True)
class TrainStep:
    """Progress: ``fraction`` of the run (epochs or time budget), the epoch, the last
    training loss, and after each epoch the held-out mean IoU (else ``None``)."""

    fraction: float
    epoch: int
    loss: float
    val_iou: float | None = None


@dataclass
class TrainResult:
    """The trained parameters (best held-out epoch), what was trained, and the figures."""

    state: dict[str, torch.Tensor]
    trained: list[str]
    iou_before: float
    iou_after: float
    iou_before_hq_only: float
    iou_after_hq_only: float
    epochs: int
    best_epoch: int
    steps: int
    seconds: float
    train_objects: int
    val_objects: int
    losses: list[float] = field(default_factory=list)
    val_history: list[float] = field(default_factory=list)
    stopped: str = ""  # one line: why training stopped

    @property
    def recommended_hq_token_only(self) -> bool:
        return self.iou_after_hq_only > self.iou_after


def trainable_parameters(model: Any, train: str = "hq") -> dict[str, torch.nn.Parameter]:
    """``{official name: parameter}`` of what ``train`` adapts (module notes)."""
    decoder = model.mask_decoder
    out = {}
    for name, p in decoder.named_parameters():
        part = name.split(".")[0]
        if part in FEATURE_PARTS:
            continue
        if train == "hq" and part not in HQ_PARTS:
            continue
        out[f"mask_decoder.{name}"] = p
    return out


def iter_training_images(session: Any, labels: Any, keys: Iterable[tuple[int, ...]] | None = None,
                         *, name: str = "") -> Generator[tuple[float, str], None, list[TrainingImage]]:
    """The objects of ``labels`` (integer ids, the session's ``(*lead, H, W)`` shape, read a
    plane at a time) on ``keys`` (default: every slice) with the embeddings they train on:
    each object with the tile the session would answer it from (the whole plane when it is
    not tiled), so training sees what inference sees. Tiles missing from the store are
    encoded (and stored). Yields ``(fraction, message)``; returns one ``TrainingImage`` per
    tile that holds objects. Slices without objects cost one plane read."""
    from ..volumes.session import plane_of
    from ..volumes.tiling import prompt_extent

    keys = session.check_labels(labels, keys)
    out: list[TrainingImage] = []
    for n, key in enumerate(keys, start=1):
        plane = plane_of(labels, key)
        by_tile: dict = {}
        for mask in objects_from_labels(plane) if plane.any() else []:
            tile = session.grid.choose(prompt_extent(mask=mask))
            by_tile.setdefault(tile, []).append(mask[tile.slices])
        for tile, masks in by_tile.items():
            emb = session.tile_predictor(key, tile).get_image_embedding(early=False)
            where = f"{list(key)}" if key else ""
            out.append(TrainingImage(emb, masks, f"{name}{where}{'' if session.is_whole(tile) else list(tile.box)}"))
        yield n / len(keys), f"{sum(len(t.objects) for t in out)} object(s) on {len(out)} image(s)"
    return out


# ------------------------------------------------------------------ targets and prompts


@dataclass
class _Object:
    image: int
    mask: np.ndarray
    target: torch.Tensor  # 256 x 256 float in [0, 1], model-input frame / 4
    box: np.ndarray  # XYXY original pixels


def _valid(frames: Frames) -> torch.Tensor:
    ih, iw = frames.input_size
    v = torch.zeros(LOW, LOW)
    v[: max(1, round(ih / 4)), : max(1, round(iw / 4))] = 1
    return v


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float64)


def _prompt(obj: _Object, frames: Frames, rng: np.random.Generator, kind: str) -> dict:
    """One object's prompt of ``kind`` (``box``, ``points``, ``mask``), original frame."""
    h, w = obj.mask.shape
    x0, y0, x1, y1 = obj.box
    if kind == "refine":  # what refine.iter_refine gives a user's imperfect label: box, inner point, mask
        from ..volumes.tiling import TileGrid

        m = _perturbed(obj.mask, rng)
        if not m.any():
            m = obj.mask
        out = object_prompts(m, (0, 0), TileGrid((h, w), tile_size=max(64, h, w), overlap=0), RefineSettings())
        out.pop("tile")
        noise = torch.from_numpy(rng.normal(0, 2, (LOW, LOW)).astype(np.float32))
        out["mask_input"] = torch.as_tensor(out["mask_input"]) + noise
        return out
    if kind in ("box", "mask"):
        jitter = rng.uniform(-0.1, 0.1, 4) * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0]) if kind == "box" else 0
        box = np.clip(obj.box + jitter, 0, [w - 1, h - 1, w - 1, h - 1])
        out: dict = {"box": box}
        if kind == "mask":
            m = _perturbed(obj.mask, rng)
            noise = torch.from_numpy(rng.normal(0, 2, (LOW, LOW)).astype(np.float32))
            out["mask_input"] = mask_to_logits(m, frames) + noise
        return out
    ys, xs = np.nonzero(obj.mask)
    n_pos = int(rng.integers(1, 4))
    pick = rng.integers(0, len(xs), n_pos)
    pts = [[xs[i], ys[i]] for i in pick]
    labels = [1] * n_pos
    n_neg = int(rng.integers(0, 3))
    near = np.zeros_like(obj.mask)
    ys0, xs0 = int(max(0, y0 - 8)), int(max(0, x0 - 8))
    near[ys0 : int(y1) + 9, xs0 : int(x1) + 9] = True
    near &= ~obj.mask
    nys, nxs = np.nonzero(near)
    if len(nxs):
        for i in rng.integers(0, len(nxs), n_neg):
            pts.append([nxs[i], nys[i]])
            labels.append(0)
    return {"point_coords": np.asarray(pts, np.float64), "point_labels": np.asarray(labels)}


def _perturbed(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mask`` dilated or eroded by 0-3 pixels: a user's imperfect label of the object."""
    r = int(rng.integers(0, 4))
    if not r:
        return mask
    return (ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion)(mask, iterations=r)


# ------------------------------------------------------------------ the forward


def decoder_logits(model: Any, emb: ImageEmbedding, prompts: list[dict], *, dense_pe: torch.Tensor | None = None):
    """SAM logits ``B x 4 x 256 x 256``, HQ logits ``B x 1 x 256 x 256`` and IoU ``B x 4`` for
    prompts of one layout on one image, through the modules as the official code applies
    them (no in-place fast path): autograd can train through it, and it gives the
    inference path's logits (``tests/engine/adaptation/test_training.py``)."""
    frames = Frames(tuple(emb.original_size), tuple(emb.input_size))
    dev = model.device
    points = boxes = masks = None
    if "point_coords" in prompts[0]:
        n = max(len(p["point_coords"]) for p in prompts)
        coords = np.zeros((len(prompts), n, 2))
        labels = -np.ones((len(prompts), n), np.int64)  # -1: padding (the official "not a point")
        for i, p in enumerate(prompts):
            k = len(p["point_coords"])
            coords[i, :k] = frames.coords_to_input(p["point_coords"])
            labels[i, :k] = p["point_labels"]
        points = (torch.as_tensor(coords, dtype=torch.float32, device=dev), torch.as_tensor(labels, device=dev))
    if "box" in prompts[0]:
        b = np.stack([frames.boxes_to_input(p["box"]) for p in prompts])
        boxes = torch.as_tensor(b, dtype=torch.float32, device=dev)
    if "mask_input" in prompts[0]:
        pe_dtype = model.prompt_encoder.mask_downscaling[0].weight.dtype
        masks = torch.stack([torch.as_tensor(p["mask_input"]) for p in prompts])[:, None].to(dev, pe_dtype)
    sparse, dense = model.prompt_encoder(points, boxes, masks)
    pe = model.prompt_encoder.get_dense_pe() if dense_pe is None else dense_pe
    # the decoder trains in float32 even when the model runs in half precision (GPUs)
    dt = model.mask_decoder.iou_token.weight.dtype
    sparse, dense, pe = sparse.to(dt), dense.to(dt), pe.to(dt)
    image = torch.as_tensor(np.asarray(emb.image_embedding), dtype=dt, device=dev)
    hq = torch.as_tensor(np.asarray(emb.hq_features), dtype=dt, device=dev)
    return model.mask_decoder.predict_masks(image, pe, sparse, dense, hq, fused=False)


def _loss(hq_logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE + Dice over the covered grid, averaged over objects."""
    x = hq_logits[:, 0]
    bce = (F.binary_cross_entropy_with_logits(x, target, reduction="none") * valid).sum((1, 2)) / valid.sum((1, 2))
    p = torch.sigmoid(x) * valid
    dice = 1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + (target * valid).sum((1, 2)) + 1)
    return (bce + dice).mean()


# ------------------------------------------------------------------ the loop


def _mean_iou(model, images, objs: list[_Object], prompts: list[dict], *, hq_only: bool) -> float:
    """Held-out mean IoU at the decoder grid: the default output (SAM + HQ) or the HQ mask alone."""
    if not objs:
        return float("nan")
    ious = []
    with torch.no_grad():
        for obj, prompt in zip(objs, prompts, strict=True):
            emb = images[obj.image].embedding
            frames = Frames(tuple(emb.original_size), tuple(emb.input_size))
            sam, hq, _ = decoder_logits(model, emb, [prompt])
            logits = hq[:, 0] if hq_only else sam[:, 0] + hq[:, 0]
            pred = (logits[0] > 0) & (_valid(frames) > 0)
            truth = obj.target > 0.5
            union = (pred | truth).sum().item()
            ious.append((pred & truth).sum().item() / union if union else 1.0)
    return float(np.mean(ious))


def iter_train(
    model: Any, images: Iterable[TrainingImage], settings: TrainSettings | None = None
) -> Generator[TrainStep, None, TrainResult]:
    """Adapt ``model``'s decoder to ``images`` (their stored embeddings and objects).

    Yields a ``TrainStep`` after every step and after every epoch's held-out evaluation;
    returns a ``TrainResult`` (the best epoch's parameters). ``model`` is not changed: a
    copy of its decoder is trained. Stopping the generator stops training and nothing is
    kept. A run with the same ``seed`` and data gives the same weights.
    """
    settings = settings or TrainSettings()
    images = list(images)
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    objs: list[_Object] = []
    for i, im in enumerate(images):
        frames = Frames(tuple(im.embedding.original_size), tuple(im.embedding.input_size))
        boxes = im.boxes if im.boxes is not None else [None] * len(im.objects)
        if len(boxes) != len(im.objects):
            raise ValueError(f"{im.name or f'image {i}'}: {len(boxes)} boxes for {len(im.objects)} objects")
        for m, given in zip(im.objects, boxes, strict=True):
            m = np.asarray(m, bool)
            if m.shape != tuple(im.embedding.original_size):
                raise ValueError(
                    f"an object of {im.name or f'image {i}'} has shape {m.shape}, its image "
                    f"{tuple(im.embedding.original_size)}"
                )
            if m.any():
                box = _box(m) if given is None else np.asarray(given, np.float64).ravel()
                objs.append(_Object(i, m, low_res(m, frames), box))
    if len(objs) < 2:
        raise ValueError(f"training needs at least 2 objects (got {len(objs)}): label more objects")
    order = rng.permutation(len(objs))
    n_val = max(1, round(settings.val_fraction * len(objs)))
    val = [objs[i] for i in order[:n_val]]
    train = [objs[i] for i in order[n_val:]]
    # held out: each object with one prompt of the kinds trained on, the same in every epoch
    kinds = settings.prompts
    val_prompts = [_prompt(o, _frames(images, o), np.random.default_rng([settings.seed, 1, k]), kinds[k % len(kinds)])
                   for k, o in enumerate(val)]

    work = _with_decoder(model, copy.deepcopy(model.mask_decoder).float())  # Adam on float32 weights
    params = trainable_parameters(work, settings.train)
    for p in work.mask_decoder.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=settings.lr)

    before = _mean_iou(work, images, val, val_prompts, hq_only=False)
    before_hq = _mean_iou(work, images, val, val_prompts, hq_only=True)
    best_iou, best_state, best_epoch, stale = before, _snapshot(params), 0, 0
    per_epoch = settings.steps_per_epoch or max(1, math.ceil(len(train) / settings.batch_objects))
    start = time.monotonic()
    budget = None if settings.minutes is None else 60 * settings.minutes
    planned = None if budget is not None else settings.epochs * per_epoch
    warmup = WARMUP_STEPS if planned is None else max(1, min(WARMUP_STEPS, planned // 20))
    losses, history = [], []
    steps = epoch = best_step = 0
    best_time = 0.0
    stopped = ""
    with torch.enable_grad():
        while not stopped:
            epoch += 1
            for k in range(per_epoch):
                if budget is not None and time.monotonic() - start > budget:
                    break
                done = (steps / planned) if planned else (time.monotonic() - start) / budget
                for group in optimizer.param_groups:  # warm-up, full rate, then annealing (_rate)
                    group["lr"] = settings.lr * min(1.0, (steps + 1) / warmup) * _rate(done)
                # one image, one prompt kind per step: the decoder takes one layout per call
                image = int(rng.choice([o.image for o in train]))
                pool = [o for o in train if o.image == image]
                batch = [pool[i] for i in rng.permutation(len(pool))[: settings.batch_objects]]
                kind = str(rng.choice(list(settings.prompts)))
                frames = _frames(images, batch[0])
                prompts = [_prompt(o, frames, rng, kind) for o in batch]
                sam, hq, _ = decoder_logits(work, images[image].embedding, prompts)
                target = torch.stack([o.target for o in batch])
                valid = _valid(frames).expand_as(target)
                loss = _loss(hq, target, valid)
                if settings.train == "decoder":  # and the default output, SAM + HQ
                    loss = loss + _loss(sam[:, :1] + hq, target, valid)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
                losses.append(float(loss.detach()))
                yield TrainStep(_fraction(epoch - 1 + (k + 1) / per_epoch, settings, start, budget), epoch, losses[-1])
            iou = _mean_iou(work, images, val, val_prompts, hq_only=False)
            history.append(iou)
            elapsed = time.monotonic() - start
            yield TrainStep(_fraction(epoch, settings, start, budget), epoch, losses[-1] if losses else float("nan"),
                            iou)
            if iou > best_iou + 1e-3:
                best_iou, best_state, best_epoch, best_step, best_time, stale = (
                    iou, _snapshot(params), epoch, steps, elapsed, 0)
            else:
                stale += 1
            if budget is not None and elapsed > budget:
                stopped = f"used its {settings.minutes:g} min budget"
            elif budget is None and epoch >= settings.epochs:
                stopped = f"ran its {settings.epochs} epochs"
            elif stale >= settings.patience and (
                    elapsed - best_time > PATIENCE_SHARE * budget if budget is not None
                    else steps - best_step >= MIN_STALE_STEPS):
                stopped = (f"held-out IoU stopped improving: best {best_iou:.3f} at epoch {best_epoch}, none better "
                           f"in the {epoch - best_epoch} epochs ({elapsed - best_time:.0f} s) since")
    if best_epoch == 0:
        stopped += f"; no epoch beat the base model's held-out IoU ({before:.3f}): its weights are kept"
    for name, value in best_state.items():
        params[name].data.copy_(value)
    after = _mean_iou(work, images, val, val_prompts, hq_only=False)
    after_hq = _mean_iou(work, images, val, val_prompts, hq_only=True)
    return TrainResult(
        state=best_state, trained=sorted(params), iou_before=before, iou_after=after,
        iou_before_hq_only=before_hq, iou_after_hq_only=after_hq, epochs=epoch, best_epoch=best_epoch, steps=steps,
        seconds=time.monotonic() - start, train_objects=len(train), val_objects=len(val),
        losses=losses, val_history=history, stopped=stopped,
    )


def _with_decoder(model: Any, decoder: torch.nn.Module) -> Any:
    """A shallow copy of ``model`` (the encoder's weights shared) with its own ``decoder``.
    ``nn.Module`` keeps its children in dicts that ``copy.copy`` shares: they are copied
    here, or setting the decoder would replace the original's too."""
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out._parameters = dict(model._parameters)
    out._buffers = dict(model._buffers)
    out.mask_decoder = decoder
    return out


def _frames(images, obj: _Object) -> Frames:
    emb = images[obj.image].embedding
    return Frames(tuple(emb.original_size), tuple(emb.input_size))


ANNEAL_FROM = 0.7  # the share of the run at the full learning rate, before it anneals


def _rate(done: float) -> float:
    """The learning rate's factor at ``done`` (a share of the run): 1 until ``ANNEAL_FROM``,
    then a cosine down to 0.1 at the end. The decoder's settings were tuned at a constant rate
    on short runs (tens of steps); a cosine over the whole run halved what they learn there."""
    if done <= ANNEAL_FROM:
        return 1.0
    x = min(1.0, (done - ANNEAL_FROM) / (1 - ANNEAL_FROM))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * x))


def _fraction(epochs_done: float, settings: TrainSettings, start: float, budget: float | None) -> float:
    """The share of the run done: of the time budget when there is one, else of the epochs."""
    if budget is not None:
        return min(1.0, (time.monotonic() - start) / budget)
    return min(1.0, epochs_done / settings.epochs)


def _snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in params.items()}


def apply_state(model: Any, state: dict[str, torch.Tensor]) -> Any:
    """A copy of ``model`` whose decoder has the trained ``state`` (the encoder is shared)."""
    out = _with_decoder(model, copy.deepcopy(model.mask_decoder))
    decoder_state = {k.removeprefix("mask_decoder."): v for k, v in state.items()}
    missing = set(decoder_state) - set(dict(out.mask_decoder.named_parameters()))
    if missing:
        raise ValueError(f"trained parameters not in this model's decoder: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, p in out.mask_decoder.named_parameters():
            if name in decoder_state:
                p.copy_(decoder_state[name].to(p))
    return out


def save_adapted(path, base_checkpoint, result: TrainResult, *, settings: TrainSettings, data: dict) -> tuple:
    """The base checkpoint's state dict (official names) with the trained tensors in it, as
    ``path`` (``.pth``), and a JSON model card of the same name. Returns both paths. The file
    is written under a temporary name and renamed, so a stopped run leaves nothing."""
    import json
    import os
    from pathlib import Path

    from ...model.checkpoints import read_state_dict

    path = Path(path)
    sd, base_id = read_state_dict(base_checkpoint)
    for name, value in result.state.items():
        if name not in sd:
            raise ValueError(f"{name} is not in the base checkpoint {base_checkpoint}")
        sd[name] = value.detach().to(sd[name].dtype).cpu().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(sd, tmp)
    card = {
        "format": "napari-sam-hq adapted model 1",
        "base_checkpoint": str(base_checkpoint),
        "base_checkpoint_sha256_16": base_id,
        "trained": settings.train,
        "trained_parameters": result.trained,
        "trained_parameter_count": int(sum(v.numel() for v in result.state.values())),
        "settings": asdict(settings),
        "data": data,
        "objects": {"train": result.train_objects, "held_out": result.val_objects},
        "prompts": "per step one kind for the batch: jittered box, 1-3 positive + 0-2 negative points, "
                   "or a dilated/eroded noisy mask with its box; held out: the object's box",
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "held_out_mean_iou": {"before": result.iou_before, "after": result.iou_after,
                              "before_hq_token_only": result.iou_before_hq_only,
                              "after_hq_token_only": result.iou_after_hq_only},
        "recommended_hq_token_only": result.recommended_hq_token_only,
    }
    card_path = path.with_suffix(".json")
    os.replace(tmp, path)
    card_path.write_text(json.dumps(card, indent=2))
    return path, card_path

"""Training the instance head (``model.instance_head``) from label images, on a CPU, in minutes.

The SAM-HQ encoder is frozen: each training image's embedding and HQ features come from the
store (computed once, reused by every later run). What is trained is the head alone, on random
crops with flips, 90-degree rotations and intensity changes (the stored features are rotated
with the image: an approximation, since the encoder itself is not rotation-equivariant; the
image branch sees the exact pixels). Held-out images (``val_fraction``) are segmented whole
after each evaluation interval and scored by AP50 (``instances.average_precision``); the best
state is kept.

Budget: the run uses the ``minutes`` it is given, with a linear warm-up and a cosine decay of
the learning rate over that time, unless the held-out AP50 has clearly stopped improving: no
gain for ``patience`` of the budget (and at least three evaluations), or a near-perfect score
three evaluations running. Gain is measured by the AP averaged over IoU 0.5-0.95, which keeps
rising with the boundaries' quality after AP50 has saturated; AP50 is reported beside it.
The result says in one line why it stopped.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..volumes.session import SegmentationSession, SliceKey, plane_of
from .instances import (
    HeadCard,
    InstanceSettings,
    average_precision,
    build_head,
    head_inputs,
    instance_targets,
    pair_ious,
    predict_maps,
)
from .instances import instances_from_maps as _instances


@dataclass(frozen=True)
class HeadTrainSettings:
    """``minutes`` of training (the budget), ``seed``, the held-out share of images, crop size
    and batch, learning rate and warm-up, evaluation interval (steps) and ``patience`` (a
    share of the budget without held-out gain that ends the run), the head's ``width``."""

    minutes: float = 5.0
    seed: int = 0
    val_fraction: float = 0.2
    crop: int = 192
    batch: int = 4
    lr: float = 3e-3
    warmup_steps: int = 30
    eval_every: int = 40
    patience: float = 0.35
    width: int = 16
    max_steps: int | None = None  # for tests: stop after this many steps regardless of time

    def __post_init__(self) -> None:
        problems = []
        if not self.minutes > 0:
            problems.append(f"minutes must be positive, got {self.minutes}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.crop < 32 or self.crop % 16:
            problems.append(f"crop must be a multiple of 16 of at least 32, got {self.crop}")
        if self.batch < 1 or self.eval_every < 1 or self.width < 4:
            problems.append("batch and eval_every must be at least 1, width at least 4")
        if not 0.0 < self.patience <= 1.0:
            problems.append(f"patience is a share of the budget in (0, 1], got {self.patience}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class HeadSample:
    """One training image (a tile of a plane): the encoder's ``H x W x 3`` input, its
    ``ImageEmbedding`` and its ``H x W`` labels; ``name`` says where it came from."""

    rgb: np.ndarray
    embedding: Any
    labels: np.ndarray
    name: str = ""


@dataclass(frozen=True)
class HeadStep:
    step: int
    fraction: float  # of the budget used
    loss: float
    val_ap50: float | None  # after an evaluation
    val_ap: float | None = None  # AP averaged over IoU 0.5-0.95: what selects the best state


@dataclass
class HeadTrainResult:
    head: Any
    card: HeadCard
    ap50_before: float
    ap50_after: float
    steps: int
    seconds: float
    stopped: str  # one line: why it stopped
    ap_after: float = 0.0  # held-out AP averaged over IoU 0.5-0.95, of the state kept


def iter_head_samples(session: SegmentationSession, labels: Any, keys: Iterable[SliceKey] | None = None,
                      *, name: str = "") -> Generator[tuple[float, str], None, list[HeadSample]]:
    """Training samples from ``labels`` (the session's shape): each tile of each slice that
    has objects, with its stored embedding (encoded now when missing). Yields progress."""
    from ..prediction.transforms import to_model_rgb

    keys = session.check_labels(labels, keys)
    samples: list[HeadSample] = []
    for i, key in enumerate(keys):
        plane_labels = np.asarray(plane_of(labels, key))
        if plane_labels.any():
            lookup = session.entry_lookup(session.plane(key))
            for tile in session.grid_tiles():
                region = plane_labels[tile.slices]
                if not region.any():
                    continue
                _, pixels, limits = lookup(tile)
                emb = session.tile_predictor(key, tile, lookup).get_image_embedding(early=False)
                samples.append(HeadSample(to_model_rgb(pixels, contrast_limits=limits), emb, region,
                                          f"{name}{key}{tile.box}"))
        yield (i + 1) / len(keys), f"{len(samples)} training image(s)"
    return samples


def _prepare(sample: HeadSample, crop: int):
    """Tensors of a sample, padded to at least ``crop``: image, embedding, HQ, targets, valid."""
    import torch
    import torch.nn.functional as F

    image, emb, hq, (h, w) = head_inputs(sample.rgb, sample.embedding)
    ph, pw = image.shape[-2:]
    targets = torch.zeros(1, 3, ph, pw)
    targets[0, :, :h, :w] = torch.from_numpy(instance_targets(sample.labels))
    valid = torch.zeros(1, 1, ph, pw)
    valid[..., :h, :w] = 1
    gh, gw = max(ph, crop), max(pw, crop)
    if (gh, gw) != (ph, pw):  # a small image: pad everything to one crop
        def pad(t, stride):
            return F.pad(t, (0, (gw - pw) // stride, 0, (gh - ph) // stride))

        image, targets, valid, emb, hq = pad(image, 1), pad(targets, 1), pad(valid, 1), pad(emb, 16), pad(hq, 4)
    return image[0], emb[0], hq[0], targets[0], valid[0]


def _batch(prepared: list, rng: np.random.Generator, settings: HeadTrainSettings):
    """A batch of augmented random crops (offsets on the 16-pixel grid, so features align)."""
    import torch

    c = settings.crop
    out = [[], [], [], [], []]
    for _ in range(settings.batch):
        image, emb, hq, targets, valid = prepared[int(rng.integers(len(prepared)))]
        gh, gw = image.shape[-2:]
        y = int(rng.integers(0, (gh - c) // 16 + 1)) * 16
        x = int(rng.integers(0, (gw - c) // 16 + 1)) * 16
        parts = [image[:, y : y + c, x : x + c], emb[:, y // 16 : (y + c) // 16, x // 16 : (x + c) // 16],
                 hq[:, y // 4 : (y + c) // 4, x // 4 : (x + c) // 4], targets[:, y : y + c, x : x + c],
                 valid[:, y : y + c, x : x + c]]
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        parts = [torch.rot90(p, k, dims=(1, 2)) for p in parts]
        if flip:
            parts = [torch.flip(p, dims=(2,)) for p in parts]
        gain, offset, gamma = rng.uniform(0.7, 1.3), rng.uniform(-0.1, 0.1), rng.uniform(0.7, 1.4)
        parts[0] = ((parts[0].clamp(0, 1) ** gamma) * gain + offset).clamp(0, 1)
        for slot, p in zip(out, parts, strict=True):
            slot.append(p)
    return [torch.stack(s) for s in out]


def _loss(logits, targets, valid):
    import torch.nn.functional as F

    fg = targets[:, :1]
    n_valid = valid.sum().clamp(min=1)
    loss_fg = (F.binary_cross_entropy_with_logits(logits[:, :1], fg, reduction="none") * valid).sum() / n_valid
    inside = fg * valid
    n_inside = inside.sum().clamp(min=1)
    loss_dist = (F.binary_cross_entropy_with_logits(logits[:, 1:], targets[:, 1:], reduction="none")
                 * inside).sum() / (2 * n_inside)
    return loss_fg + 2.0 * loss_dist


THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)


def _score(head, samples: list[HeadSample], settings: InstanceSettings) -> tuple[float, float]:
    """Pooled AP of the head on whole samples, TP / (TP + FP + FN) over all their objects: at
    IoU 0.5 (AP50, what we report), and averaged over IoU 0.5-0.95 (what selects the best
    state and decides when training has stopped improving: AP50 saturates on a few held-out
    objects long before the boundaries stop improving)."""
    was_training = head.training
    head.eval()
    counts = np.zeros((len(THRESHOLDS), 3), np.int64)
    for s in samples:
        iou = pair_ious(s.labels, _instances(predict_maps(head, s.rgb, s.embedding), settings))
        counts += [((iou > t).sum(), iou.shape[0], iou.shape[1]) for t in THRESHOLDS]
    head.train(was_training)
    tp, n_true, n_pred = counts.T
    denominator = n_true + n_pred - tp
    ap = np.where(denominator == 0, 1.0, tp / np.maximum(denominator, 1))
    return float(ap[0]), float(ap.mean())


def iter_train_head(
    model: Any,
    samples: list[HeadSample],
    settings: HeadTrainSettings | None = None,
    *,
    instance_settings: InstanceSettings | None = None,
    data: dict | None = None,
) -> Generator[HeadStep, None, HeadTrainResult]:
    """Train an instance head for ``model``'s features on ``samples`` (``iter_head_samples``).

    Yields a ``HeadStep`` per step (``val_ap50`` set after each evaluation); returns a
    ``HeadTrainResult`` with the best head, its card (the model it was trained for, the data,
    the held-out figures) and why it stopped. ``ValueError`` for samples without objects.
    """
    import torch

    settings = settings or HeadTrainSettings()
    inst = instance_settings or InstanceSettings()
    samples = [s for s in samples if np.asarray(s.labels).any()]
    if not samples:
        raise ValueError("no objects to learn from: the label images are empty (draw or commit some objects first)")
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    order = rng.permutation(len(samples))
    n_val = min(len(samples) - 1, max(1 if len(samples) > 1 else 0, round(settings.val_fraction * len(samples))))
    if settings.val_fraction == 0:
        n_val = 0
    val = [samples[i] for i in order[:n_val]]
    train = [samples[i] for i in order[n_val:]]
    held_out = bool(val)
    val = val or train  # one image: scored on what it learns from (the card says so)
    head = build_head({"width": settings.width})
    head.train()
    prepared = [_prepare(s, settings.crop) for s in train]
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=1e-4)
    budget = settings.minutes * 60.0
    start = time.monotonic()
    before, best = _score(head, val, inst)
    best_ap50, best_state, best_time = before, copy.deepcopy(head.state_dict()), 0.0
    since_best = perfect = 0
    step = 0
    stopped = f"used its {settings.minutes:g} min budget"
    while True:
        elapsed = time.monotonic() - start
        fraction = min(1.0, elapsed / budget)
        if fraction >= 1.0:
            break
        if settings.max_steps is not None and step >= settings.max_steps:
            stopped = f"reached max_steps={settings.max_steps}"
            break
        warm = min(1.0, (step + 1) / settings.warmup_steps)
        lr = settings.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * fraction)))
        for g in opt.param_groups:
            g["lr"] = lr
        image, emb, hq, targets, valid = _batch(prepared, rng, settings)
        loss = _loss(head(image, emb, hq), targets, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ap50 = ap = None
        if step % settings.eval_every == 0:
            ap50, ap = _score(head, val, inst)
            if ap > best + 0.002:
                best, best_ap50, best_state, best_time = ap, ap50, copy.deepcopy(head.state_dict()), elapsed
                since_best = 0
            else:
                since_best += 1
            perfect = perfect + 1 if ap >= 0.99 else 0
        yield HeadStep(step, fraction, float(loss.detach()), ap50, ap)
        if ap is not None:
            if perfect >= 3:
                stopped = f"held-out AP (IoU 0.5-0.95) was 0.99 or more three evaluations running (step {step})"
                break
            if since_best >= 3 and elapsed - best_time > settings.patience * budget:
                stopped = (f"held-out AP stopped improving: best {best:.3f} (AP50 {best_ap50:.3f}) at "
                           f"{best_time:.0f} s, none better in the {elapsed - best_time:.0f} s since (patience "
                           f"{settings.patience:.0%} of the budget)")
                break
    head.load_state_dict(best_state)
    head.eval()
    seconds = time.monotonic() - start
    card = HeadCard(
        model_name=model.name, checkpoint_id=model.checkpoint_id, config=dict(head.config),
        data={**(data or {}), "training_images": len(train), "objects": int(sum(len(np.unique(s.labels)) - 1
                                                                                 for s in train))},
        held_out={"ap50_before": round(before, 4), "ap50_after": round(best_ap50, 4),
                  "ap_0.5-0.95_after": round(best, 4), "images": len(val) if held_out
                  else 0, "note": "held-out images" if held_out else "one image: scored on its training data"},
        training={**asdict(settings), "steps": step, "seconds": round(seconds, 1), "stopped": stopped},
    )
    head.card = card
    return HeadTrainResult(head, card, before, best_ap50, step, seconds, stopped, best)


__all__ = ["HeadSample", "HeadStep", "HeadTrainResult", "HeadTrainSettings", "average_precision",
           "iter_head_samples", "iter_train_head"]

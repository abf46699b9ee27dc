"""Instances from the instance head (``model.instance_head``): what it is trained to predict
(``instance_targets``), how its maps become instances (``instances_from_maps``: a seeded
watershed), how a plane of any size is run through it (``iter_head_maps``: by the session's
tiles, blended, so the watershed sees one seamless plane and no object is cut or doubled at a
tile edge), the ``ais`` mode of segment everything (``iter_ais``), the head's file with its
JSON card (``save_head`` / ``load_head``), and the score we report (``average_precision``).

Frames: planes are ``H x W`` (rows y, columns x), maps ``3 x H x W`` float32 in [0, 1]
(foreground probability, centre closeness, boundary distance), labels ``H x W`` uint32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..masks import object_slices
from ..volumes.session import SegmentationSession, SliceKey
from ..volumes.tiling import Tile
from .linking import relabel_raster

HEAD_FORMAT = "napari-sam-hq instance head"
HEAD_VERSION = 1


class HeadError(ValueError):
    """A head file that cannot be used here; the message says why and what to do."""


@dataclass(frozen=True)
class InstanceSettings:
    """How maps become instances: pixels above ``foreground`` are objects; seeds are where the
    centre closeness exceeds ``seed`` and the boundary distance ``seed_boundary`` (the cores
    of the objects); the watershed floods from them over the boundary distance; objects
    smaller than ``min_size`` pixels are dropped."""

    foreground: float = 0.5
    seed: float = 0.5
    seed_boundary: float = 0.4
    min_size: int = 25

    def __post_init__(self) -> None:
        for name in ("foreground", "seed", "seed_boundary"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {getattr(self, name)}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be at least 1 pixel, got {self.min_size}")


# ---------------------------------------------------------------------------- targets and instances


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """``3 x H x W`` float32 targets of an ``H x W`` label image: foreground (0/1), centre
    closeness (1 at the object's innermost pixel, falling to 0 at its farthest pixel) and
    boundary distance (the distance to the background or another object, divided by the
    object's largest; 1 at its innermost pixel). Touching objects stay apart: each object's
    distances are computed on its own mask."""
    labels = np.asarray(labels)
    out = np.zeros((3, *labels.shape), np.float32)
    out[0] = labels > 0
    for label, sl in object_slices(labels):
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)  # a ring of background
        mask = labels[sl] == label
        edt = ndimage.distance_transform_edt(mask)
        top = float(edt.max())
        if top <= 0:
            continue
        out[2][sl][mask] = (edt / top)[mask]
        cy, cx = np.unravel_index(int(np.argmax(edt)), edt.shape)
        yy, xx = np.nonzero(mask)
        d = np.hypot(yy - cy, xx - cx)
        out[1][sl][yy, xx] = 1.0 - d / max(float(d.max()), 1.0)
    return out


def instances_from_maps(maps: np.ndarray, settings: InstanceSettings | None = None) -> np.ndarray:
    """``H x W`` uint32 instances (ids 1..N, raster order) from ``3 x H x W`` maps by a seeded
    watershed (``InstanceSettings``)."""
    from skimage.segmentation import watershed

    s = settings or InstanceSettings()
    fg, centre, boundary = maps[0], maps[1], maps[2]
    mask = fg > s.foreground
    seeds, n = ndimage.label(mask & (centre > s.seed) & (boundary > s.seed_boundary))
    if n == 0:
        return np.zeros(fg.shape, np.uint32)
    flood = watershed(-boundary, markers=seeds, mask=mask)  # ridges at the borders between objects
    return _relabel(flood, s.min_size)


def _relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Objects of at least ``min_size`` pixels, ids 1..N in raster order (``relabel_raster``)."""
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return relabel_raster(labels).astype(np.uint32)


def average_precision(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """The instance-segmentation AP at one IoU ``threshold`` as the cell tools report it
    (StarDist, Cellpose, micro-sam): TP / (TP + FP + FN), objects matched one to one by IoU
    above the threshold (above 0.5 a match is unique). 1.0 when both are empty."""
    tp, n_true, n_pred = match_counts(truth, pred, threshold)
    denominator = n_true + n_pred - tp
    return 1.0 if denominator == 0 else tp / denominator


def match_counts(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """``(true positives, true objects, predicted objects)`` at IoU ``threshold`` (>= 0.5)."""
    iou = pair_ious(truth, pred)
    return int((iou > threshold).sum()), iou.shape[0], iou.shape[1]


def pair_ious(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``true objects x predicted objects`` IoU (background left out), from one contingency
    table: compute it once and count matches at as many thresholds as needed."""
    truth, pred = np.asarray(truth).ravel(), np.asarray(pred).ravel()
    t_ids, t_inv = np.unique(truth, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    both = np.zeros((len(t_ids), len(p_ids)), np.int64)
    np.add.at(both, (t_inv, p_inv), 1)
    t_area, p_area = both.sum(1), both.sum(0)
    ti = slice(1, None) if t_ids[0] == 0 else slice(None)
    pi = slice(1, None) if p_ids[0] == 0 else slice(None)
    inter = both[ti, pi]
    union = t_area[ti, None] + p_area[None, pi] - inter
    return inter / np.maximum(union, 1)


# ---------------------------------------------------------------------------- running the head


def head_inputs(rgb: np.ndarray, embedding: Any) -> tuple[Any, Any, Any, tuple[int, int]]:
    """The head's tensors for one tile: ``1 x 3 x H' x W'`` image in [0, 1] (padded with zeros
    to multiples of 16), the embedding and HQ features cropped to the tile's valid region of
    the model input and resized to ``H'/16 x W'/16`` and ``H'/4 x W'/4``; and ``(H, W)``."""
    import torch
    import torch.nn.functional as F

    h, w = rgb.shape[:2]
    ph, pw = math.ceil(h / 16) * 16, math.ceil(w / 16) * 16
    image = torch.zeros(1, 3, ph, pw)
    image[0, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(rgb, np.float32)).permute(2, 0, 1) / 255.0
    ih, iw = embedding.input_size

    def grid(features: np.ndarray, stride: int, size: tuple[int, int]):
        t = torch.from_numpy(np.asarray(features, np.float32))
        valid = t[:, :, : max(1, math.ceil(ih / stride)), : max(1, math.ceil(iw / stride))]
        # the valid region covers the tile's h x w pixels; the padding of the head's grid beyond them
        inner = (max(1, round(size[0] * h / ph)), max(1, round(size[1] * w / pw)))
        out = torch.zeros(1, t.shape[1], *size)
        out[:, :, : inner[0], : inner[1]] = F.interpolate(valid, size=inner, mode="bilinear", align_corners=False)
        return out

    emb = grid(embedding.image_embedding, 16, (ph // 16, pw // 16))  # 64 x 64 cells of the 1024 input
    hq = grid(embedding.hq_features, 4, (ph // 4, pw // 4))
    return image, emb, hq, (h, w)


def predict_maps(head: Any, rgb: np.ndarray, embedding: Any) -> np.ndarray:
    """``3 x H x W`` maps of one tile (``rgb`` the encoder's ``H x W x 3`` input, ``embedding``
    its ``ImageEmbedding``)."""
    import torch

    image, emb, hq, (h, w) = head_inputs(rgb, embedding)
    param = next(head.parameters())
    with torch.inference_mode():
        out = head(image.to(param), emb.to(param), hq.to(param))
    return torch.sigmoid(out[0, :, :h, :w]).float().cpu().numpy()


def _tent(h: int, w: int, tile: Tile, shape: tuple[int, int]) -> np.ndarray:
    """Blending weights of a tile: 1 in the middle, falling linearly towards its inner edges
    (edges on the plane's border keep weight 1), never 0."""
    def ramp(n: int, lo_inner: bool, hi_inner: bool) -> np.ndarray:
        r = np.ones(n, np.float32)
        m = max(1, n // 4)
        up = (np.arange(m, dtype=np.float32) + 1) / (m + 1)
        if lo_inner:
            r[:m] = np.minimum(r[:m], up)
        if hi_inner:
            r[n - m :] = np.minimum(r[n - m :], up[::-1])
        return r

    ry = ramp(h, tile.y0 > 0, tile.y1 < shape[0])
    rx = ramp(w, tile.x0 > 0, tile.x1 < shape[1])
    return ry[:, None] * rx[None, :]


def iter_head_maps(session: SegmentationSession, key: SliceKey, head: Any) -> Generator[float, None, np.ndarray]:
    """``3 x H x W`` maps of slice ``key``: the head on each of the session's tiles (encoded
    now if the store lacks them), blended where tiles overlap. Yields the fraction done."""
    from ..prediction.transforms import to_model_rgb

    check_head(head, session.model)
    key = session.check_key(key)
    h, w = session.plane_shape
    lookup = session.entry_lookup(session.plane(key))
    tiles = session.grid_tiles()
    total = np.zeros((3, h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    for i, tile in enumerate(tiles):
        _, pixels, limits = lookup(tile)
        emb = session.tile_predictor(key, tile, lookup).get_image_embedding(early=False)
        maps = predict_maps(head, to_model_rgb(pixels, contrast_limits=limits), emb)
        wt = _tent(*maps.shape[1:], tile, (h, w))
        total[:, tile.y0 : tile.y1, tile.x0 : tile.x1] += maps * wt
        weight[tile.y0 : tile.y1, tile.x0 : tile.x1] += wt
        yield (i + 1) / len(tiles)
    total /= np.maximum(weight, 1e-6)
    return total


def iter_ais(
    session: SegmentationSession,
    head: Any,
    keys: list[SliceKey] | None = None,
    settings: InstanceSettings | None = None,
    *,
    link_iou: float = 0.5,
) -> Generator[tuple[float, str], None, np.ndarray]:
    """Segment everything with the instance head alone (``ais``): ``H x W`` labels for a plane
    (``keys`` = ``[()]``), or ``len(keys) x H x W`` for slices of a stack, linked along its
    first leading axis (``everything.link_slices``)."""
    from ...model.steps import scaled
    from .linking import iter_linked_planes

    def plane(key: SliceKey):
        maps = yield from scaled(iter_head_maps(session, key, head), 0.0, 0.9, "instance head")
        labels = instances_from_maps(maps, settings)
        yield 1.0, f"{int(labels.max())} objects"
        return labels

    return (yield from iter_linked_planes(session, keys, plane, link_iou=link_iou))


# ---------------------------------------------------------------------------- the head file


@dataclass
class HeadCard:
    """What a head file says about itself (also written beside it as ``<file>.json``)."""

    model_name: str
    checkpoint_id: str
    config: dict
    data: dict = field(default_factory=dict)  # what it was trained on: images, objects, classes
    held_out: dict = field(default_factory=dict)  # AP50 before/after, images, objects
    training: dict = field(default_factory=dict)  # settings, steps, seconds, why it stopped
    format: str = HEAD_FORMAT
    version: int = HEAD_VERSION


def build_head(config: dict | None = None):
    from ...model.instance_head import InstanceHead

    return InstanceHead(**(config or {}))


def save_head(path: str | Path, head: Any, card: HeadCard) -> tuple[Path, Path]:
    """Write the head (``torch.save`` of its weights and card) and ``<path>.json`` (the card);
    atomically, so a failed write leaves no half file. The SAM-HQ checkpoint is not touched."""
    import torch

    from ..atomic import atomic_write

    path = Path(path)
    blob = {"format": HEAD_FORMAT, "version": HEAD_VERSION, "card": asdict(card),
            "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}}
    atomic_write(path, lambda tmp: torch.save(blob, tmp))
    card_path = path.with_suffix(path.suffix + ".json")
    atomic_write(card_path, lambda tmp: tmp.write_text(json.dumps(asdict(card), indent=2)))
    return path, card_path


def load_head(path: str | Path, *, model: Any | None = None):
    """``(head, card)`` from a head file; with ``model``, a head made for another encoder is
    refused (``HeadError`` naming both). Any unreadable file is a ``HeadError`` too."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise HeadError(f"no instance head at {path}: train one with 'napari-sam-hq train --head instances'")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file: say so in one line
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise HeadError(f"{path} is not a readable instance head ({type(err).__name__}: {first})") from None
    if not isinstance(blob, dict) or blob.get("format") != HEAD_FORMAT:
        raise HeadError(f"{path} is not an instance head of napari-sam-hq (a SAM-HQ checkpoint? use it as --model)")
    if blob.get("version", 0) > HEAD_VERSION:
        raise HeadError(f"{path} was written by a newer napari-sam-hq (head format {blob['version']}); upgrade")
    card = HeadCard(**blob["card"])
    head = build_head(card.config)
    try:
        head.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise HeadError(f"{path}: the weights do not fit the head's configuration ({first})") from None
    head.eval()
    head.card = card
    if model is not None:
        check_head(head, model)
    return head, card


def check_head(head: Any, model: Any) -> None:
    """Refuse a head trained on another encoder's features (``HeadError``)."""
    card = getattr(head, "card", None)
    if card is None:
        return  # a head made in this process, not from a file: the caller's own
    if (card.model_name, card.checkpoint_id) != (model.name, model.checkpoint_id):
        raise HeadError(
            f"this instance head was trained on the features of {card.model_name} (weights "
            f"{card.checkpoint_id}); the model in use is {model.name} (weights {model.checkpoint_id}). "
            "Use the model it was trained with, or train a head for this one"
        )

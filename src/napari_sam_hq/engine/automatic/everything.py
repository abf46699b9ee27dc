"""Segment everything: a grid of point prompts, filtered and de-duplicated into instance labels.

Frames: planes are ``H x W``; points (x, y) and boxes XYXY are plane pixels, box corners
inclusive (a box's x1 is its last column, as the official code computes it).

Per crop (the whole plane, the official extra crop layers, or the tiles of a large plane),
as the official ``SamAutomaticMaskGenerator`` does, on the embeddings of the session's
store:
1. a grid of ``points_per_side`` x ``points_per_side`` single positive points, decoded in
   batches; each point's mask is the official single output (best of the three SAM masks
   + HQ) with the SAM token's predicted IoU as its score. Coarse to fine
   (``AutoSettings.coarse_to_fine``, on by default): a sparse grid first, then only the
   dense grid's points that no accepted mask covers and that are not on flat background
   (``fine_points``): the same objects for a fraction of the prompts; off, the official grid;
2. masks scored at most ``pred_iou_thresh`` are dropped *before* their mask heads run (the
   score comes from the transformer alone: same result, a fraction of the cost);
3. the stability score (IoU of the mask thresholded at +-``stability_score_offset``) must
   reach ``stability_score_thresh``;
4. masks whose box lies within 20 px of an inner crop edge are dropped (cut objects: the
   neighbouring crop has them whole);
5. box non-maximum suppression (IoU above ``box_nms_thresh``, higher score wins).
Across crops, NMS again, preferring masks from smaller crops. Then (our additions, off with
0 / 1.0) holes and islands smaller than ``min_mask_region_area`` are removed (then NMS
again, preferring unchanged masks, as the official postprocessing) and masks covering more
than ``max_mask_fraction`` of the plane (the background, usually) are dropped.

Labels: masks are painted largest first, so where masks overlap the smaller object keeps
the pixels: a large object never swallows a smaller one. A mask left with no visible pixel
is dropped. Ids are 1..N in raster order of each object's first pixel.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
from scipy import ndimage

from ..volumes.session import SegmentationSession, SliceKey
from ..volumes.tiling import Tile
from .linking import iter_linked_planes, link_slices, relabel_raster
from .settings import AutoSettings


@dataclass(frozen=True)
class AutoMask:
    """One mask: ``crop_mask`` is the mask inside ``box`` (XYXY inclusive, plane pixels)."""

    box: tuple[int, int, int, int]
    crop_mask: np.ndarray
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    crop: Tile

    @property
    def area(self) -> int:
        return int(self.crop_mask.sum())

    def full(self, shape_hw: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape_hw, bool)
        x0, y0, x1, y1 = self.box
        out[y0 : y1 + 1, x0 : x1 + 1] = self.crop_mask
        return out


# ---------------------------------------------------------------------------- geometry


def point_grid(n_per_side: int) -> np.ndarray:
    """``n^2 x 2`` (x, y) in [0, 1], cell centres, rows of constant y (the official grid)."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def crop_tiles(shape_hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> list[tuple[Tile, int]]:
    """The official crop boxes: the whole plane (layer 0), then ``(2^i)^2`` overlapping crops
    per layer ``i``; as ``(tile, layer)``."""
    h, w = shape_hw
    out = [(Tile(0, 0, h, w), 0)]
    short = min(h, w)
    for i in range(n_layers):
        n = 2 ** (i + 1)
        overlap = int(overlap_ratio * short * (2 / n))
        cw = int(math.ceil((overlap * (n - 1) + w) / n))
        ch = int(math.ceil((overlap * (n - 1) + h) / n))
        for x0, y0 in product([int((cw - overlap) * j) for j in range(n)], [int((ch - overlap) * j) for j in range(n)]):
            out.append((Tile(y0, x0, min(y0 + ch, h), min(x0 + cw, w)), i + 1))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of XYXY boxes ``N x 4`` and ``M x 4`` (area ``(x1 - x0) * (y1 - y0)``, as torchvision)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, by decreasing score (ties: lower index
    first). A box is dropped when its IoU with a kept, higher-scored box exceeds the threshold."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, np.float64)))
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for rank, i in enumerate(order):
        if suppressed[rank]:
            continue
        keep.append(int(i))
        rest = order[rank + 1 :]
        if len(rest):
            suppressed[rank + 1 :] |= box_iou(boxes[i : i + 1], boxes[rest])[0] > iou_threshold
    return np.array(keep, dtype=np.int64)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """XYXY inclusive box of a 2D mask, or ``None`` when it is empty."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> np.ndarray:
    """``K``: for ``K x H x W`` logits, the IoU of the masks cut at ``threshold + offset`` and
    ``threshold - offset`` (the first lies inside the second, so it is a ratio of counts);
    0 where the looser mask is empty."""
    inter = (logits > threshold + offset).flatten(1).sum(1, dtype=torch.int32)
    union = (logits > threshold - offset).flatten(1).sum(1, dtype=torch.int32)
    score = (inter.double() / union.clamp(min=1).double()).cpu().numpy()
    score[union.cpu().numpy() == 0] = 0.0
    return score


def _near_inner_edge(box, crop: Tile, shape_hw, atol: float = 20.0) -> bool:
    """The official rule: a box side within ``atol`` of a crop side that is not a plane side."""
    h, w = shape_hw
    crop_box = (crop.x0, crop.y0, crop.x1, crop.y1)
    plane_box = (0, 0, w, h)
    return any(abs(b - c) <= atol and abs(b - p) > atol for b, c, p in zip(box, crop_box, plane_box, strict=True))


def remove_small_regions(mask: np.ndarray, min_area: int, *, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or remove islands (``"islands"``) smaller than ``min_area``
    (8-connected, as the official OpenCV version); returns the mask and whether it changed."""
    correct_holes = mode == "holes"
    work = (~mask) if correct_holes else mask
    labels, n = ndimage.label(work, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask, False
    sizes = np.bincount(labels.ravel())[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < min_area]
    if not small:
        return mask, False
    if correct_holes:
        fill = [i + 1 for i, s in enumerate(sizes) if s >= min_area]
        return ~np.isin(labels, fill), True
    keep = [i + 1 for i, s in enumerate(sizes) if s >= min_area]
    if not keep:  # the official code keeps the largest island then
        keep = [int(np.argmax(sizes)) + 1]
    return np.isin(labels, keep), True


# ---------------------------------------------------------------------------- generation


def _crops(session: SegmentationSession, settings: AutoSettings) -> list[tuple[Tile, int]]:
    """(tile, points-per-side divisor layer) to prompt on one plane of ``session``."""
    if session.grid.tiled:
        # grid tiles at full resolution, then the coarse whole-plane pass for big objects
        return [(t, 0) for t in session.grid_tiles()] + [(session.grid.coarse, 0)]
    return crop_tiles(session.plane_shape, settings.crop_n_layers, settings.crop_overlap_ratio)


def iter_generate_masks(
    session: SegmentationSession, key: SliceKey, settings: AutoSettings | None = None
) -> Generator[tuple[float, str], None, list[AutoMask]]:
    """All masks of slice ``key``, filtered and de-duplicated (module docstring).

    Yields ``(fraction, message)`` per batch; returns the masks, best first.
    """
    settings = settings or AutoSettings()
    key = session.check_key(key)
    shape = session.plane_shape
    lookup = session.entry_lookup(session.plane(key))
    crops = _crops(session, settings)
    per_crop = [
        point_grid(int(settings.points_per_side / settings.crop_n_points_downscale_factor**layer))
        for _, layer in crops
    ]
    total = sum(math.ceil(len(g) / settings.points_per_batch) for g in per_crop) + 1
    done = 0
    everything: list[AutoMask] = []
    for (tile, _layer), grid in zip(crops, per_crop, strict=True):
        predictor = session.tile_predictor(key, tile, lookup)
        ch, cw = tile.y1 - tile.y0, tile.x1 - tile.x0
        points = grid * np.array([cw, ch])  # crop frame (x, y)
        n_side = round(math.sqrt(len(grid)))
        coarse_n = settings.coarse_points_per_side or max(4, n_side // 4)
        found: list[AutoMask] = []
        if settings.coarse_to_fine and coarse_n < n_side:
            coarse = point_grid(coarse_n) * np.array([cw, ch])
            for batch in _batches(coarse, settings.points_per_batch):
                found += _process_batch(predictor, batch, tile, shape, settings)
                done += len(batch) / settings.points_per_batch
                yield min(done / total, 0.99), f"crop {tile.box}: {len(found)} masks (coarse grid)"
            _, pixels, limits = lookup(tile)
            points = fine_points(points, coarse, found, tile, pixels, limits, spacing=max(cw, ch) / n_side)
        for batch in _batches(points, settings.points_per_batch):
            found += _process_batch(predictor, batch, tile, shape, settings)
            done += len(batch) / settings.points_per_batch
            yield min(done / total, 0.99), f"crop {tile.box}: {len(found)} masks"
        if found:
            keep = nms(np.array([m.box for m in found]), np.array([m.predicted_iou for m in found]),
                       settings.box_nms_thresh)
            everything += [found[i] for i in keep]
    if len(crops) > 1 and everything:
        areas = np.array([(m.crop.y1 - m.crop.y0) * (m.crop.x1 - m.crop.x0) for m in everything], float)
        keep = nms(np.array([m.box for m in everything]), 1.0 / areas, settings.crop_nms_thresh)
        everything = [everything[i] for i in keep]
    if settings.min_mask_region_area > 0 and everything:
        everything = _postprocess_small_regions(everything, settings)
    limit = settings.max_mask_fraction * shape[0] * shape[1]
    everything = [m for m in everything if m.area <= limit]
    yield 1.0, f"{len(everything)} masks"
    return everything


def _batches(points: np.ndarray, n: int):
    for s in range(0, len(points), n):
        yield points[s : s + n]


def fine_points(points: np.ndarray, coarse: np.ndarray, found: list[AutoMask], tile: Tile, pixels: np.ndarray,
                limits, *, spacing: float) -> np.ndarray:
    """The dense grid's ``points`` (crop frame) still worth a prompt after the coarse pass:
    those that no accepted mask covers and that are not on flat background. Background is
    what the coarse points that found nothing sampled: a point is skipped when its
    neighbourhood (``spacing`` wide) is flat (its spread within twice the image's noise) and
    at that level (within three noise sigmas). Without such coarse points nothing is
    skipped as background."""
    from ..prediction.transforms import to_model_rgb

    ch, cw = tile.y1 - tile.y0, tile.x1 - tile.x0
    covered = np.zeros((ch, cw), bool)
    for m in found:
        x0, y0, x1, y1 = m.box
        covered[y0 - tile.y0 : y1 - tile.y0 + 1, x0 - tile.x0 : x1 - tile.x0 + 1] |= m.crop_mask
    ix = np.clip(np.round(points[:, 0]).astype(int), 0, cw - 1)
    iy = np.clip(np.round(points[:, 1]).astype(int), 0, ch - 1)
    keep = ~covered[iy, ix]
    grey = to_model_rgb(pixels, contrast_limits=limits).astype(np.float32).mean(axis=-1)
    noise = max(1.0, 1.4826 * float(np.median(np.abs(grey - ndimage.gaussian_filter(grey, 1.0)))))
    size = max(3, int(spacing))
    mean = ndimage.uniform_filter(grey, size)
    spread = np.sqrt(np.maximum(ndimage.uniform_filter(grey * grey, size) - mean * mean, 0))
    cx = np.clip(np.round(coarse[:, 0]).astype(int), 0, cw - 1)
    cy = np.clip(np.round(coarse[:, 1]).astype(int), 0, ch - 1)
    empty = ~covered[cy, cx]  # coarse points that found no object: they sampled the background
    if empty.any():
        level = float(np.median(mean[cy[empty], cx[empty]]))
        flat = (spread[iy, ix] < 2 * noise) & (np.abs(mean[iy, ix] - level) < 3 * noise)
        keep &= ~flat
    return points[keep]


def _process_batch(predictor, points: np.ndarray, tile: Tile, shape, settings: AutoSettings) -> list[AutoMask]:
    """Masks of one batch of grid points (crop frame) that pass the score, stability and
    edge filters, in plane pixels."""
    # a threshold of 0 filters nothing (the official rule: scores can be negative)
    floor = settings.pred_iou_thresh if settings.pred_iou_thresh > 0 else -np.inf
    logits, scores, kept = predictor.predict_logits(
        points[:, None, :], np.ones((len(points), 1), np.int64),
        min_score=floor, multimask_output=settings.multimask_output,
    )
    out: list[AutoMask] = []
    if not len(kept):
        return out
    frames = predictor._require_image()
    thr, off = predictor.model.mask_threshold, settings.stability_score_offset
    for j in range(0, len(kept), 8):  # 8 full-size masks at a time bound the memory
        full = frames.logits_to_original(logits[j : j + 8, None])[:, 0]  # K x h x w, crop frame
        stability = stability_score(full, thr, off)
        for i in range(len(full)):
            if settings.stability_score_thresh > 0 and stability[i] < settings.stability_score_thresh:
                continue
            mask = (full[i] > thr).cpu().numpy()
            box = mask_box(mask)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            plane_box = (x0 + tile.x0, y0 + tile.y0, x1 + tile.x0, y1 + tile.y0)
            if _near_inner_edge(plane_box, tile, shape):
                continue
            px, py = points[kept[j + i]]
            out.append(AutoMask(
                box=plane_box,
                crop_mask=mask[y0 : y1 + 1, x0 : x1 + 1].copy(),
                predicted_iou=float(scores[j + i]),
                stability_score=float(stability[i]),
                point=(float(px + tile.x0), float(py + tile.y0)),
                crop=tile,
            ))
    return out


def _postprocess_small_regions(masks: list[AutoMask], settings: AutoSettings) -> list[AutoMask]:
    new, scores = [], []
    pad = settings.min_mask_region_area  # outside the box: one region, never a small hole
    for m in masks:
        crop = np.pad(m.crop_mask, pad)
        crop, changed_h = remove_small_regions(crop, settings.min_mask_region_area, mode="holes")
        crop, changed_i = remove_small_regions(crop, settings.min_mask_region_area, mode="islands")
        crop = crop[pad:-pad, pad:-pad]
        unchanged = not (changed_h or changed_i)
        if not unchanged:
            box = mask_box(crop)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            crop = crop[y0 : y1 + 1, x0 : x1 + 1]
            box = (m.box[0] + x0, m.box[1] + y0, m.box[0] + x1, m.box[1] + y1)
            m = AutoMask(box, crop, m.predicted_iou, m.stability_score, m.point, m.crop)
        new.append(m)
        scores.append(float(unchanged))
    keep = nms(np.array([m.box for m in new]), np.array(scores),
               max(settings.box_nms_thresh, settings.crop_nms_thresh))
    return [new[i] for i in keep]


def masks_to_labels(masks: list[AutoMask], shape_hw: tuple[int, int], *, dtype=np.uint32) -> np.ndarray:
    """Non-overlapping ``H x W`` labels (module docstring: smaller objects keep overlaps)."""
    labels = np.zeros(shape_hw, np.int64)
    order = sorted(range(len(masks)), key=lambda i: (-masks[i].area, i))
    for n, i in enumerate(order, start=1):
        x0, y0, x1, y1 = masks[i].box
        region = labels[y0 : y1 + 1, x0 : x1 + 1]
        region[masks[i].crop_mask] = n
    return relabel_raster(labels).astype(dtype)


def iter_amg(
    session: SegmentationSession,
    keys: list[SliceKey] | None = None,
    settings: AutoSettings | None = None,
    *,
    link_iou: float = 0.5,
) -> Generator[tuple[float, str], None, np.ndarray]:
    """The grid method (``amg``): labels for a plane (``keys`` = ``[()]``) or for slices of a
    stack along its first leading axis, linked into 3D objects (``link_slices``). Returns
    ``H x W`` or ``len(keys) x H x W`` uint32 labels. ``modes.iter_segment_everything`` is
    the entry point that chooses among the modes."""
    def plane(key: SliceKey):
        masks = yield from iter_generate_masks(session, key, settings)
        return masks_to_labels(masks, session.plane_shape)

    return (yield from iter_linked_planes(session, keys, plane, link_iou=link_iou))


__all__ = [
    "AutoMask",
    "AutoSettings",
    "box_iou",
    "crop_tiles",
    "iter_generate_masks",
    "iter_amg",
    "link_slices",
    "masks_to_labels",
    "nms",
    "point_grid",
    "remove_small_regions",
    "stability_score",
]


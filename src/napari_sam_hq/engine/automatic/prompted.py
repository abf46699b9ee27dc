"""Automatic prompts (``apg``): the instance head finds the objects, SAM-HQ draws them.

Per plane: the head's maps and instances (``instances``); each instance becomes one prompt,
its box (XYXY, plane pixels, last row and column inclusive, as SAM's mask boxes; grown by
``BOX_MARGIN`` of its size and 2 pixels, so a head whose boundaries fall short does not clip
the decoder's) and one positive point at its most central pixel (the maximum of the centre
map inside it), with a window (the instance's box grown by ``WINDOW_MARGIN`` of its size and
4 pixels) outside which the decoder does not compute its mask: the mask heads at 256 x 256
were two thirds of a prompt's cost (10 s for 240 cells on a 512 x 512 plane, 2 cores). The
session decodes them in batches by tile (``SegmentationSession.segment``). Then:

1. answers scored below ``AutoSettings.pred_iou_thresh`` are dropped, as are answers that
   disagree with the instance that prompted them (IoU below ``min_agreement``: the decoder
   jumped to a neighbour or the background) and answers that reach their window's edge
   inside the plane (the decoder spilled far past the object the head saw); the head's
   own instance stands in for them, so no object the head found is lost;
2. duplicates (box IoU above ``box_nms_thresh``, e.g. two seeds in one cell) keep the
   higher score (non-maximum suppression);
3. masks are painted best first, each only on pixels still free, so touching cells share
   their border instead of overlapping; what is left below ``min_mask_region_area`` pixels
   goes.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from ...model.steps import scaled
from ..masks import object_slices
from ..volumes.session import SegmentationSession, SliceKey
from .everything import mask_box, nms
from .instances import InstanceSettings, instances_from_maps, iter_head_maps
from .linking import iter_linked_planes, relabel_raster
from .settings import AutoSettings

MIN_AGREEMENT = 0.5
BOX_MARGIN = 0.1
WINDOW_MARGIN = 0.5
BATCH = 32  # prompts per decoder call (the session groups them by tile)


def head_prompts(instances: np.ndarray, centre: np.ndarray) -> list[tuple[dict, tuple[int, int, int, int], np.ndarray]]:
    """``(prompt, instance box, instance mask crop)`` per instance: the prompt's box (grown by
    the margin, inside the plane), most central point and window (integer XYXY, inclusive,
    inside the plane); the instance's own XYXY box (last row and column inclusive) and its
    mask inside that box."""
    h, w = instances.shape
    out = []
    for label, (rows, cols) in object_slices(instances):
        crop = instances[rows, cols] == label
        c = np.where(crop, centre[rows, cols], -1.0)
        y, x = np.unravel_index(int(np.argmax(c)), c.shape)
        own = np.array([cols.start, rows.start, cols.stop - 1, rows.stop - 1], np.float64)
        gy, gx = BOX_MARGIN * (rows.stop - rows.start) + 2, BOX_MARGIN * (cols.stop - cols.start) + 2
        limit = [w - 1, h - 1, w - 1, h - 1]
        box = np.clip(own + np.array([-gx, -gy, gx, gy]), 0, limit)
        gy, gx = WINDOW_MARGIN * (rows.stop - rows.start) + 4, WINDOW_MARGIN * (cols.stop - cols.start) + 4
        window = np.clip(own + np.round([-gx, -gy, gx, gy]), 0, limit)
        prompt = {"point_coords": np.array([[x + cols.start, y + rows.start]], np.float64),
                  "point_labels": np.array([1]), "box": box, "window": window}
        out.append((prompt, (cols.start, rows.start, cols.stop - 1, rows.stop - 1), crop))
    return out


def apg_plane(session: SegmentationSession, key: SliceKey, maps: np.ndarray, settings: AutoSettings,
              instance_settings: InstanceSettings | None = None,
              *, min_agreement: float = MIN_AGREEMENT) -> Generator[float, None, np.ndarray]:
    """Labels of one plane from its head ``maps`` (module docstring); yields the fraction."""
    instances = instances_from_maps(maps, instance_settings)
    prompts = head_prompts(instances, maps[1])
    h, w = instances.shape
    candidates: list[tuple[float, tuple[int, int, int, int], np.ndarray]] = []  # (score, XYXY incl., crop)
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        answers = session.segment(key, [p for p, _, _ in chunk], hq_token_only=False)
        for (prompt, (x0, y0, x1, y1), own), answer in zip(chunk, answers, strict=True):
            box = mask_box(answer.mask)
            agree = 0.0
            if box is not None and not _spilled(box, prompt["window"], (h, w)):
                bx0, by0, bx1, by1 = box
                crop = answer.mask[by0 : by1 + 1, bx0 : bx1 + 1]
                # the overlap with the prompting instance, inside the two boxes' intersection
                ix0, iy0, ix1, iy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
                inter = 0
                if ix0 <= ix1 and iy0 <= iy1:
                    inter = int(np.logical_and(crop[iy0 - by0 : iy1 - by0 + 1, ix0 - bx0 : ix1 - bx0 + 1],
                                               own[iy0 - y0 : iy1 - y0 + 1, ix0 - x0 : ix1 - x0 + 1]).sum())
                agree = inter / (int(crop.sum()) + int(own.sum()) - inter)
            if box is not None and answer.score >= settings.pred_iou_thresh and agree >= min_agreement:
                candidates.append((float(answer.score), box, crop))
            else:  # the decoder failed this one: the head's instance stands in
                candidates.append((0.5 * agree, (x0, y0, x1, y1), own))
        yield min(1.0, (start + len(chunk)) / max(1, len(prompts)))
    order: list[int] = []
    if candidates:
        kept = nms(np.array([c[1] for c in candidates], np.float64), np.array([c[0] for c in candidates]),
                   settings.box_nms_thresh)
        order = [int(i) for i in kept]  # best first
    labels = np.zeros((h, w), np.int64)
    for n, i in enumerate(order, start=1):
        _, (x0, y0, x1, y1), crop = candidates[i]
        region = labels[y0 : y1 + 1, x0 : x1 + 1]
        free = crop & (region == 0)
        if free.sum() >= max(1, settings.min_mask_region_area):
            region[free] = n
    return relabel_raster(labels).astype(np.uint32)


def _spilled(box: tuple[int, int, int, int], window: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether a mask with XYXY ``box`` reaches an edge of its ``window`` (XYXY, inclusive)
    that is not the plane's own: the decoder's mask went on past the window."""
    h, w = shape
    wx0, wy0, wx1, wy1 = (int(v) for v in window)
    bx0, by0, bx1, by1 = box
    return (0 < wx0 >= bx0) or (0 < wy0 >= by0) or (w - 1 > wx1 <= bx1) or (h - 1 > wy1 <= by1)


def iter_apg(
    session: SegmentationSession,
    head: Any,
    keys: list[SliceKey] | None = None,
    settings: AutoSettings | None = None,
    *,
    instance_settings: InstanceSettings | None = None,
    link_iou: float = 0.5,
) -> Generator[tuple[float, str], None, np.ndarray]:
    """``apg`` for a plane (``keys`` = ``[()]``) or slices of a stack (linked in 3D)."""
    settings = settings or AutoSettings()

    def plane(key: SliceKey):
        maps = yield from scaled(iter_head_maps(session, key, head), 0.0, 0.3, "instance head")
        gen = apg_plane(session, key, maps, settings, instance_settings)
        return (yield from scaled(gen, 0.3, 1.0, "SAM-HQ prompts"))

    return (yield from iter_linked_planes(session, keys, plane, link_iou=link_iou))

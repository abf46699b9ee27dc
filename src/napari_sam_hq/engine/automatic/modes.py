"""Segment everything, three ways; ``iter_segment_everything`` chooses:

- ``ais``: the instance head alone (``instances.iter_ais``): a few hundred ms a plane after
  the embedding; needs a head trained on the user's labels.
- ``apg``: the head's objects become one point and box prompt each for the SAM-HQ decoder
  (``prompted.iter_apg``): SAM-HQ's boundaries, one prompt per object instead of a grid.
- ``amg``: the point grid (``everything.iter_amg``), coarse to fine unless
  ``AutoSettings.coarse_to_fine`` is off; needs no head.

Every mode returns ``H x W`` uint32 labels for a plane, or ``len(keys) x H x W`` for slices of
a stack along its first leading axis, linked into 3D objects.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from ..volumes.session import SegmentationSession, SliceKey
from .settings import AutoSettings

MODES = ("ais", "apg", "amg")


def default_mode(head: Any | None) -> str:
    """``ais`` with a head, else ``amg``."""
    return "ais" if head is not None else "amg"


def iter_segment_everything(
    session: SegmentationSession,
    keys: list[SliceKey] | None = None,
    settings: AutoSettings | None = None,
    *,
    mode: str | None = None,
    head: Any | None = None,
    instance_settings: Any | None = None,
    link_iou: float = 0.5,
) -> Generator[tuple[float, str], None, np.ndarray]:
    """Labels of ``keys`` (default: every slice) by ``mode`` (default: ``default_mode(head)``).
    Yields ``(fraction, message)``; ``ValueError`` for an unknown mode or a head mode
    without a head."""
    mode = mode or default_mode(head)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode in ("ais", "apg") and head is None:
        raise ValueError(f"mode {mode!r} needs an instance head: train one ('napari-sam-hq train --head "
                         "instances', or Adapt in the widget) and give it, or use mode 'amg'")
    if mode == "ais":
        from .instances import iter_ais

        return (yield from iter_ais(session, head, keys, instance_settings, link_iou=link_iou))
    if mode == "apg":
        from .prompted import iter_apg

        return (yield from iter_apg(session, head, keys, settings, instance_settings=instance_settings,
                                    link_iou=link_iou))
    from .everything import iter_amg

    return (yield from iter_amg(session, keys, settings, link_iou=link_iou))

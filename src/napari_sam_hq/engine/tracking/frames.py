"""A movie's frames segmented one at a time, for tracking: with the instance head (``ais``) when
there is one, else segment everything's grid (``amg``); each frame is its own plane (a
``T x Y x X`` movie is a stack of planes to the session), so nothing links them here: the
tracker does. ``SegmentedFrames`` reads like an array of label frames and segments a frame
when it is first asked for (and keeps the last one), so a long movie is never whole in memory."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..automatic.modes import iter_segment_everything
from ..volumes.session import SegmentationSession


class SegmentedFrames:
    """``frames[t]``: the labels of frame ``t`` of ``session``'s movie (its first leading
    axis), by ``mode`` with ``head``; ``len`` and ``shape`` as the movie's."""

    def __init__(self, session: SegmentationSession, *, head: Any = None, mode: str | None = None,
                 settings: Any = None) -> None:
        if not session.lead_shape:
            raise ValueError("a movie is T x Y x X (or T x Z x Y x X); a 2D image has no time axis to track along")
        self.session, self.head, self.mode, self.settings = session, head, mode, settings
        self.shape = (*session.lead_shape, *session.plane_shape)
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: int) -> np.ndarray:
        if self._last is not None and self._last[0] == t:
            return self._last[1]
        lead = self.session.lead_shape
        if len(lead) == 1:
            from ...model.steps import exhaust

            labels = exhaust(iter_segment_everything(self.session, [(t,)], self.settings, mode=self.mode,
                                                     head=self.head))[0]
        else:  # T x Z x Y x X: the frame's slices, linked through z
            from ...model.steps import exhaust

            keys = [(t, z) for z in range(lead[1])]
            planes = [exhaust(iter_segment_everything(self.session, [k], self.settings, mode=self.mode,
                                                      head=self.head))[0] for k in keys]
            from ..automatic.linking import link_slices

            labels = link_slices(planes)
        self._last = (t, labels)
        return labels

"""Torch from worker threads at full speed: OpenMP's waiting policy, set before torch loads.

PyTorch's CPU wheels run every parallel operator through GNU OpenMP (libgomp). Each thread
that starts a parallel region becomes the master of its own team, kept for that thread's
life. The napari widget runs the model in worker threads (encoding in one, decoding in
another, napari's thread pool keeps them), so a session soon has more OpenMP threads than
cores. libgomp then *throttles*: a team's idle workers sleep at once instead of spinning a
little, and every parallel operator pays a futex wake-up of its workers.

Measured on this project's 2-core machines (torch 2.13, `y + y` on a 1024 x 320 float32
tensor): 16-22 us on the first master thread, 90-104 us on a second one while the first
lives. A vit_tiny 1024 x 1024 ``set_image`` took 0.48 s on the main thread and 0.62 s on
a second thread; in the napari session on a 2048 x 2048 stack the first tile took 1.36 s to
encode and a decode 240 ms, against 0.72 s and 120 ms with the setting below.

``OMP_WAIT_POLICY=ACTIVE`` with ``GOMP_SPINCOUNT=300000`` makes throttled teams spin as
long as libgomp lets an unthrottled team spin by default (300000 iterations, then sleep),
so every worker thread runs like the first. libgomp reads its environment once, when torch
loads it: ``spin_openmp_workers`` must run before ``import torch`` and leaves a setting the
user made alone.
"""

from __future__ import annotations

import os
import sys

SETTING = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}


def spin_openmp_workers() -> bool:
    """Set ``SETTING`` in the environment for the libgomp that torch will load; whether it
    takes effect (``False``: torch is loaded already, or the user set either variable)."""
    if "torch" in sys.modules or any(name in os.environ for name in SETTING):
        return False
    os.environ.update(SETTING)
    return True

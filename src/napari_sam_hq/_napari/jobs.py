"""``torch_job``: napari's ``thread_worker`` for background work that runs torch; and
``process_events_until``, how a script's call waits for such work on the GUI thread.

Every job gives back its thread's idle OpenMP workers when it ends (in that thread: Qt
keeps pooled threads alive for 30 s), and the GUI thread gives back its own before it starts
one. With two threads' teams alive, libgomp stops its workers' spinning and torch's
operators pay a wake-up each: the encoder in a worker was 20-30% slower than on the main
thread (``engine.threads``).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable

from napari.qt.threading import thread_worker

from ..engine.threads import release_openmp_threads


def torch_job(func: Callable) -> Callable:
    """``thread_worker(func)`` (a generator function stays one: napari's ``GeneratorWorker``)
    whose work gives back the OpenMP workers of the thread it ran on, however it ends."""
    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def work(*args, **kwargs):
            try:
                return (yield from func(*args, **kwargs))
            finally:
                release_openmp_threads()

    else:

        @functools.wraps(func)
        def work(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            finally:
                release_openmp_threads()

    create_worker = thread_worker(work)

    @functools.wraps(func)
    def start(*args, **kwargs):
        release_openmp_threads()  # the GUI thread's team, if anything there ran torch
        return create_worker(*args, **kwargs)

    return start


def process_events_until(done: Callable[[], bool], *, timeout: float | None = None, poll: float = 0.005) -> bool:
    """Process Qt events until ``done()`` (the workers' results land on this thread, so they
    can finish), then once more for the last handlers. Returns ``False`` if ``timeout``
    seconds passed first (``None``: no limit)."""
    from qtpy.QtCore import QCoreApplication

    end = None if timeout is None else time.monotonic() + timeout
    while not done():
        if end is not None and time.monotonic() > end:
            return False
        QCoreApplication.processEvents()
        time.sleep(poll)
    QCoreApplication.processEvents()
    return True

"""``Jobs``: the tools' workers by name; ``torch_job``: napari's ``thread_worker`` for
background work that runs torch; and ``process_events_until``, how a script's call waits
for such work on the GUI thread.

Every job gives back its thread's idle OpenMP workers when it ends (in that thread: Qt
keeps pooled threads alive for 30 s), and the GUI thread gives back its own before it starts
one. With two threads' teams alive, libgomp stops its workers' spinning and torch's
operators pay a wake-up each: the encoder in a worker was 20-30% slower than on the main
thread (``engine.volumes.threads``).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable

from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject

from ..engine.volumes import memory
from ..engine.volumes.threads import release_openmp_threads
from .status import StatusLine


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


class Jobs(QObject):
    """The tools' background workers, at most one per name (``propagate``, ``auto``, ...):
    each one's ``(fraction, text)`` progress goes to the status line (or its own ``yielded``),
    its result to ``returned``, its errors to the status line; its button is disabled while it
    runs and the dock's Cancel enabled. ``busy_elsewhere`` says whether the dock's other work
    (encoding, decoding) runs, so Cancel is disabled only when nothing does.

    A ``QObject`` child of the dock, and each job's handlers are slots of a child of it
    (``_Relay``): when the dock is destroyed (the viewer closed), Qt disconnects them, so a
    worker still running never reaches a deleted control."""

    def __init__(self, status: StatusLine, cancel_button, *, busy_elsewhere: Callable[[], bool],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._status = status
        self._cancel_button = cancel_button
        self._busy_elsewhere = busy_elsewhere
        self._workers: dict[str, object] = {}

    def running(self, name: str):
        """The worker running under ``name``, or ``None``."""
        return self._workers.get(name)

    @property
    def busy(self) -> bool:
        return bool(self._workers)

    def run(self, name: str, worker, *, button, returned, message: str, yielded=None):
        """Start ``worker`` under ``name`` and return it."""
        relay = _Relay(self, name, button, returned, yielded or self._status.show_progress)
        worker.yielded.connect(relay.on_yielded)
        worker.returned.connect(relay.on_returned)
        worker.errored.connect(relay.on_errored)
        worker.finished.connect(relay.on_finished)
        self._workers[name] = worker
        button.setEnabled(False)
        self._cancel_button.setEnabled(True)
        self._status.say(message)
        worker.start()
        return worker

    def report_error(self, err: Exception) -> None:
        self._status.report_error(str(err), err)

    def finished(self, name: str, button) -> None:
        """A job's worker ended: its button back, its memory to the system (its relay calls it)."""
        self._workers.pop(name, None)
        memory.trim()  # the worker's temporaries back to the system (engine/volumes/memory.py)
        button.setEnabled(True)
        if not self._workers and not self._busy_elsewhere():
            self._cancel_button.setEnabled(False)

    def cancel(self) -> None:
        """Stop every tool's worker between two steps."""
        for worker in list(self._workers.values()):
            worker.quit()


class _Relay(QObject):
    """One job's handlers, as slots of a child of ``Jobs`` (see there)."""

    def __init__(self, jobs: Jobs, name: str, button, returned: Callable, yielded: Callable) -> None:
        super().__init__(jobs)
        self._jobs, self._name, self._button = jobs, name, button
        self._returned, self._yielded = returned, yielded

    def on_yielded(self, message) -> None:
        self._yielded(message)

    def on_returned(self, result) -> None:
        self._returned(result)

    def on_errored(self, err: Exception) -> None:
        self._jobs.report_error(err)

    def on_finished(self) -> None:
        self._jobs.finished(self._name, self._button)
        self.setParent(None)  # let go of it (Python frees it with its last reference)
        self.deleteLater()

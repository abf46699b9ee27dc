"""Background jobs give back their thread's OpenMP workers (``_napari/jobs.py``)."""

from __future__ import annotations

import threading

import pytest

from napari_sam_hq._napari import jobs


@pytest.fixture
def releases(monkeypatch) -> list[int]:
    """The threads ``release_openmp_threads`` was called from, in order."""
    calls: list[int] = []
    monkeypatch.setattr(jobs, "release_openmp_threads", lambda: calls.append(threading.get_ident()) or True)
    return calls


def test_a_generator_job_releases_in_its_thread_and_the_gui_thread_before(qtbot, releases):
    ran: list[int] = []

    @jobs.torch_job
    def job(n: int):
        ran.append(threading.get_ident())
        yield n
        yield n + 1
        return 2 * n

    worker = job(3)  # created on the GUI thread: its own team goes first
    assert releases == [threading.get_ident()]
    yielded, returned = [], []
    worker.yielded.connect(yielded.append)
    worker.returned.connect(returned.append)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        worker.start()
    assert yielded == [3, 4] and returned == [6]  # a GeneratorWorker still, values passed through
    assert ran[0] != threading.get_ident()
    assert releases == [threading.get_ident(), ran[0]], "released in the job's thread when it ended"


def test_a_failing_function_job_still_releases(qtbot, releases):
    ran: list[int] = []

    @jobs.torch_job
    def job():
        ran.append(threading.get_ident())
        raise ValueError("no model")

    worker = job()
    errors = []
    worker.errored.connect(errors.append)
    with qtbot.capture_exceptions() as raised, qtbot.waitSignal(worker.finished, timeout=10_000):
        worker.start()  # superqt re-raises a worker's error in the event loop as well
    assert [type(e) for e in errors] == [ValueError]
    assert all(isinstance(e[1], ValueError) for e in raised)
    assert releases == [threading.get_ident(), ran[0]]

"""A thread's idle OpenMP workers are given back when its torch work is done (engine/threads.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_sam_hq.engine.volumes import threads

# Each thread that runs a parallel torch operator keeps its own OpenMP team (one worker
# thread more than itself with two threads). A pooled worker is imitated by a thread that
# stays alive after its work; the process's thread count tells whether its team is still there.
CODE = """
import os, threading
import torch
from napari_sam_hq.engine.volumes.threads import release_openmp_threads

torch.set_num_threads(2)
def count():
    return len(os.listdir("/proc/self/task"))

def work():
    x = torch.randn(2048, 2048)
    for _ in range(3):
        (x @ x).add_(1.0)

released = []
done, go, leave = threading.Event(), threading.Event(), threading.Event()
def pooled():
    work()
    done.set(); go.wait()
    released.append(release_openmp_threads())
    done.set(); leave.wait()

t = threading.Thread(target=pooled)
t.start()
done.wait(); done.clear()
work()  # the main thread's own team, beside the pooled thread's
both = count()
main_released = release_openmp_threads()
only_pooled = count()  # the main thread's worker is gone, the pooled thread's is not
go.set(); done.wait()
neither = count()
leave.set(); t.join()
print(both, only_pooled, neither, main_released, released[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp, torch's OpenMP on Linux")
def test_each_thread_gives_back_its_own_team():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    both, only_pooled, neither, main_released, pooled_released = out.split()
    assert main_released == "True" and pooled_released == "True"
    assert int(only_pooled) == int(both) - 1, "the main thread's team worker is gone, the other's is not"
    assert int(neither) == int(only_pooled) - 1, "the pooled thread's own release took its worker"


def test_release_is_safe_anywhere():
    # no torch work on this thread (or none left): nothing to give back, no error
    assert threads.release_openmp_threads() in (True, False)
    assert threads.release_openmp_threads() == threads.release_openmp_threads()

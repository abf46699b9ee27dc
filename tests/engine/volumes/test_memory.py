"""Freed memory goes back to the system after a piece of work (engine/memory.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_sam_hq.engine.volumes import memory

CODE = """
import numpy as np
from napari_sam_hq.engine.volumes import memory

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

# 256 MB of 64 KB blocks (below the mmap threshold: from the heap), then all freed but the
# last, which keeps the heap's top in place, so glibc cannot give the rest back by itself
blocks = [np.ones(8192) for _ in range(4096)]
last = blocks[-1]
del blocks
before = rss()
released = memory.trim()
print(before, rss(), released)
"""


@pytest.mark.skipif(not memory.available(), reason="malloc_trim is glibc's (Linux)")
def test_trim_gives_freed_heap_memory_back():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    before, after, released = out.split()
    assert released == "True"
    assert float(before) - float(after) > 150, f"RSS {before} MB -> {after} MB"


def test_trim_and_limit_are_safe_to_call_anywhere():
    assert memory.limit_arenas() == memory.available()
    assert memory.trim() in (True, False)
    assert memory.trim_if_grown() in (True, False)


GROWTH = """
import numpy as np
from napari_sam_hq.engine.volumes import memory

def rss():
    return memory.resident_bytes() / 2**20

memory.trim()  # the floor: here
small = memory.trim_if_grown(64)  # nothing grew
blocks = [np.ones(8192) for _ in range(4096)]  # 256 MB of heap blocks, freed but the last
last = blocks[-1]
del blocks
before = rss()
grown = memory.trim_if_grown(64)
after = rss()
again = memory.trim_if_grown(64)  # the floor moved down with the trim
print(small, grown, again, before, after)
"""


@pytest.mark.skipif(not memory.available(), reason="malloc_trim is glibc's (Linux)")
def test_trim_if_grown_trims_only_past_the_margin():
    out = subprocess.run([sys.executable, "-c", GROWTH], capture_output=True, text=True, check=True).stdout
    small, grown, again, before, after = out.split()
    assert (small, grown, again) == ("False", "True", "False")
    assert float(before) - float(after) > 150, f"RSS {before} MB -> {after} MB"


CHURN = """
import resource, sys
import numpy as np
from napari_sam_hq.engine.volumes import memory

if sys.argv[1] == "setup":
    print(memory.setup_heap())
else:
    print(True)
# a decoder call's pattern: temporaries of 4-12 MB, all freed at the end of the call
def call():
    blocks = [np.ones(n) for n in (2**19, 2**20, 3 * 2**19, 2**20)]
    del blocks
call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    call()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not memory.available(), reason="mallopt is glibc's (Linux)")
def test_setup_heap_keeps_the_heap_top_between_calls():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True).stdout
        took, count = out.split()
        assert took == "True"
        return int(count)

    pages = 32 * 2**20 // 4096  # one call's temporaries
    adjusting, fixed = faults("glibc"), faults("setup")
    # (measured: ~31000 and 0)
    assert adjusting > 2 * pages, "glibc's own thresholds kept the heap top here: the test shows nothing"
    assert fixed < pages // 10, f"{fixed} page faults in 20 calls: the heap top was given back"

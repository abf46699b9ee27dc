"""Giving freed memory back to the operating system between pieces of work.

glibc's malloc keeps the memory of freed blocks for reuse. An encoder pass frees hundreds
of MB of tensors and numpy temporaries, much of it in blocks below glibc's mmap threshold
(which rises to 32 MB after the first large free) and in several per-thread arenas (the
encoding worker, the decoding worker, the GUI thread, dask's threads). Those pages stay
resident, so the next piece of work is added on top of the last one's leftovers.

Measured in a napari session on a 300 x 2048 x 2048 stack (benchmarks/bench_scale.py,
random weights, 2 cores): peak RSS 1.77 GB by default; 1.57 GB with a ``trim`` after each
encoded tile (the session does that); 1.36 GB when glibc mmaps every block over 1 MB, which
doubled vit_tiny's encoder time (page faults on every allocation) and is not done. A trim
costs ~10 ms, and the encode after it was not slower (2213 vs 2270 ms, interleaved); a
decode right after one pays its page faults again (~+50 ms), so decodes are not trimmed
one by one, only at the end of a tool's run (propagation, segment everything, ...), or when
the resident set has grown by ``GROWTH_MB`` since the last look (``trim_if_grown``, after
each decode and commit): in the same napari session, 20 prompts and 5 commits grew it by
~220 MB of freed-but-kept heap (after a trim 170 MB of it came back), which set the peak of
the whole session.

The number of arenas is limited once (``limit_arenas``), so the memory one thread frees can
serve another.

glibc moves its mmap threshold up to the size of the last mmapped block freed, and gives the
top of the heap back whenever more than twice that is free there. A decoder call allocates
and frees 4-8 MB tensors per prompt, so the heap top was returned and faulted in again on
every call: ``setup_heap`` fixes both thresholds at the ceiling glibc's own adjustment
reaches (32 MB mmap, 64 MB trim), which a long session arrives at after its first large free
anyway. Measured (vit_tiny, 2 cores, ``SamHQPredictor`` transformer, 2 prompts a call):
13.7-14.1 ms a prompt with glibc's adjustment, 10.7-11.4 ms with the ceiling fixed; a
fixed trim threshold alone leaves the mmap threshold at 128 KB and was slower (18.3 ms).
Explicit trims (``trim``, ``trim_if_grown``) work as before.

Only glibc (Linux) has these calls; elsewhere (macOS, Windows, musl) ``trim`` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what its adjustment pairs with that
ARENA_MAX = 2
GROWTH_MB = 128  # trim_if_grown's margin

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_loaded = False
# The resident set just after the last trim (or the lowest seen since), in bytes: the C heap
# is the process's own, so this is the process's too, not a piece of any object's state.
_floor: int | None = None


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (has ``malloc_trim``), loaded once."""
    global _libc, _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.malloc_trim.restype = ctypes.c_int
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.mallopt.restype = ctypes.c_int
            except (OSError, AttributeError):
                libc = None
            _libc = libc
        return _libc


def limit_arenas() -> bool:
    """At most ``ARENA_MAX`` malloc arenas for threads that allocate from now on (glibc), so
    the workers' freed memory serves each other; an app calls it once, early (the widget
    does). Returns whether the C library took it."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, ARENA_MAX))


def setup_heap() -> bool:
    """What an app (the widget, the command line) calls once, early: ``limit_arenas`` and
    fixed mmap and trim thresholds (module docstring). Returns whether glibc took them."""
    libc = _glibc()
    if libc is None:
        return False
    fixed = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return limit_arenas() and fixed


def available() -> bool:
    """Whether this process's C library can give freed memory back (glibc)."""
    return _glibc() is not None


def trim() -> bool:
    """Give the C heap's free pages back to the operating system (``malloc_trim(0)``); call
    it after a piece of work that freed a lot (an encoded tile, a tool's run).
    Returns whether anything was released; ``False`` where the C library is not glibc."""
    global _floor
    libc = _glibc()
    if libc is None:
        return False
    released = bool(libc.malloc_trim(0))
    now = resident_bytes()
    with _lock:
        _floor = now
    return released


def resident_bytes() -> int | None:
    """This process's resident set now (Linux ``/proc/self/statm``; ~10 us), else ``None``."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def trim_if_grown(margin_mb: float = GROWTH_MB) -> bool:
    """``trim`` if the resident set grew by more than ``margin_mb`` since the last trim (or
    the lowest point seen since): cheap enough after every decode, and a trim (~10 ms, the
    next decode's page faults) at most once per ``margin_mb`` of growth. Returns whether
    it trimmed."""
    global _floor
    if _glibc() is None:
        return False
    now = resident_bytes()
    if now is None:
        return False
    with _lock:
        if _floor is None or now < _floor:
            _floor = now
        if now - _floor <= margin_mb * 2**20:
            return False
    trim()  # moves the floor to what is resident after it
    return True

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
one by one, only at the end of a tool's run (propagation, segment everything, ...).

The number of arenas is limited once (``limit_arenas``), so the memory one thread frees can
serve another.

Only glibc (Linux) has these calls; elsewhere (macOS, Windows, musl) ``trim`` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
ARENA_MAX = 2

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_loaded = False


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


def available() -> bool:
    """Whether this process's C library can give freed memory back (glibc)."""
    return _glibc() is not None


def trim() -> bool:
    """Give the C heap's free pages back to the operating system (``malloc_trim(0)``); call
    it after a piece of work that freed a lot (an encoded tile, a tool's run).
    Returns whether anything was released; ``False`` where the C library is not glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False

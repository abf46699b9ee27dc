"""Giving back a thread's idle OpenMP workers when its torch work is done.

torch's CPU kernels run in OpenMP parallel regions. With GNU OpenMP (libgomp: torch's
Linux wheels), every thread that has run one keeps its own team of worker threads, alive
and idle, until it ends. Between two parallel regions those workers spin, ready for the
next one, only while libgomp manages no more threads than there are CPUs; past that they
go to sleep after a few hundred iterations and every operator pays a wake-up.

A napari session crosses that line as soon as two threads have run torch: two pooled
workers (the encoder's, then a decode's), which Qt keeps alive for 30 s after their job, or
a worker and the GUI thread of a script that ran torch itself. Measured here (vit_tiny
``image_encoder`` on 1024 x 1024, 2 cores, one process): 0.45 s on the main thread,
0.53-0.59 s on a second thread while another thread's team is idle, 0.40-0.44 s once that
team is given back. The memory-bound operators (copies, layer norms, adds) lost most: their
parallel regions are short, so the wake-ups were a large part of them. In the widget (the
300 x 2048 x 2048 stack's first tile, three A/B pairs) the encoder took 0.64-0.70 s against
0.65-0.75 s before: there the GUI thread and Xvfb's renderer share the 2 cores as well.

``release_openmp_threads`` gives the calling thread's team back (OpenMP 5.0's
``omp_pause_resource_all``; libgomp frees the calling thread's pool only). The next
parallel region on that thread starts a new team (tens of microseconds). The widget calls
it at the end of every background job, in the job's thread, and in the GUI thread before it
starts one. Elsewhere (LLVM's libomp on macOS, where a pause shuts the whole runtime down,
Windows, no OpenMP) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t (omp.h): free what can be re-created on demand

_lock = threading.Lock()
_pause = None  # libgomp's omp_pause_resource_all, once found
_looked = False  # looked with torch loaded: libgomp is not coming


def _loaded_libgomp() -> str | None:
    """The path of the libgomp this process has loaded (Linux), or ``None``."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").rpartition(" ")[2]
                if "/libgomp" in path and ".so" in path:
                    return path
    except OSError:
        return None
    return None


def _omp_pause():
    """libgomp's ``omp_pause_resource_all`` if this process has libgomp loaded, else ``None``.

    Only an already loaded libgomp is used (``RTLD_NOLOAD``): loading one would give a
    second OpenMP runtime that torch's kernels do not use.
    """
    global _pause, _looked
    with _lock:
        if _pause is not None or _looked or not sys.platform.startswith("linux"):
            return _pause
        torch_loaded = "torch" in sys.modules  # before the scan: torch may load during it
        path = _loaded_libgomp()
        if path is not None:
            try:
                lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
                fn = lib.omp_pause_resource_all
                fn.argtypes = [ctypes.c_int]
                fn.restype = ctypes.c_int
                _pause = fn
            except (OSError, AttributeError):  # not loaded after all, or older than OpenMP 5.0
                _looked = True
        elif torch_loaded:
            _looked = True  # torch without libgomp: look no more
        return _pause


def release_openmp_threads() -> bool:
    """Give back the calling thread's idle OpenMP worker threads (libgomp); call it from a
    thread whose torch work is done for now, outside any parallel region. Returns whether
    the OpenMP runtime took it; ``False`` where there is no libgomp (module docstring)."""
    pause = _omp_pause()
    return pause is not None and pause(_OMP_PAUSE_SOFT) == 0

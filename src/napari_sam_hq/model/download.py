"""Download official checkpoints once into a cache folder, verified and written atomically.

Cache folder: ``$NAPARI_SAM_HQ_CACHE`` if set, else ``$XDG_CACHE_HOME/napari-sam-hq``
(``~/.cache/napari-sam-hq``). ``$NAPARI_SAM_HQ_MIRROR`` replaces the download base
address (a local mirror for machines without internet access).

``iter_download`` is a generator that yields ``(bytes_done, bytes_total or None)`` so a
GUI can show progress and cancel between chunks; ``ensure_checkpoint`` exhausts it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Generator
from pathlib import Path

from .registry import CHECKPOINTS, CheckpointInfo

CHUNK = 1 << 20

Progress = Callable[[int, "int | None"], None]


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched or verified; the message says what to do instead."""


def cache_dir() -> Path:
    env = os.environ.get("NAPARI_SAM_HQ_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-sam-hq"


def checkpoint_url(info: CheckpointInfo) -> str:
    mirror = os.environ.get("NAPARI_SAM_HQ_MIRROR")
    return f"{mirror.rstrip('/')}/{info.file_name}" if mirror else info.url


def cached_path(info: CheckpointInfo) -> Path:
    return cache_dir() / info.file_name


def is_cached(info: CheckpointInfo) -> bool:
    return cached_path(info).is_file()


def iter_download(
    info: CheckpointInfo, *, timeout: float = 30.0
) -> Generator[tuple[int, int | None], None, Path]:
    """Fetch ``info`` into the cache unless it is there; yields progress, returns the path.

    The bytes go to ``<file>.part`` and are renamed into place only after the size
    (Content-Length and ``info.size``) and ``info.sha256`` check out, so an interrupted
    or corrupt download never leaves a file that looks complete.
    """
    target = cached_path(info)
    if target.is_file():
        return target
    url = checkpoint_url(info)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + f".{os.getpid()}.part")
    digest = hashlib.sha256()
    done = 0
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - https/file URLs
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DownloadError(_offline_message(info, url, err)) from err
        with response, part.open("wb") as out:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(length) if length and length.isdigit() else info.size
            yield done, total
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                yield done, total
        if total is not None and done != total:
            raise DownloadError(
                f"download of {info.file_name} stopped at {done} of {total} bytes; run again to retry"
            )
        if info.size is not None and done != info.size:
            raise DownloadError(
                f"{info.file_name} from {url} has {done} bytes, expected {info.size}; "
                "the mirror may hold another file"
            )
        if info.sha256 is not None and digest.hexdigest() != info.sha256:
            raise DownloadError(
                f"{info.file_name} from {url} has sha256 {digest.hexdigest()}, expected "
                f"{info.sha256}; the file is corrupt or not the official checkpoint"
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


def checkpoint_path(
    name_or_path: str | Path, *, download: bool = True, progress: Progress | None = None
) -> Path | None:
    """The file or folder behind a registry name or a path. A registry name (that is not also
    an existing path) is its cached file, downloaded first if ``download`` (else ``None`` while
    not cached); anything else is the path itself, which may not exist."""
    key = str(name_or_path)
    if key in CHECKPOINTS and not Path(key).exists():
        info = CHECKPOINTS[key]
        if is_cached(info) or download:
            return ensure_checkpoint(info, progress=progress)
        return None
    return Path(name_or_path).expanduser()


def ensure_checkpoint(info: CheckpointInfo, *, progress: Progress | None = None) -> Path:
    """Path of the cached checkpoint, downloading it first if needed."""
    report = progress or _print_progress(info.file_name)
    gen = iter_download(info)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        report(done, total)


def _offline_message(info: CheckpointInfo, url: str, err: Exception) -> str:
    return (
        f"could not download {info.file_name} from {url} ({err}). Without internet access, "
        f"download it on another machine and put it at {cached_path(info)} "
        "(or set NAPARI_SAM_HQ_CACHE to the folder that holds it, or "
        "NAPARI_SAM_HQ_MIRROR to a local mirror), or pass the file's path instead of the name."
    )


def _print_progress(name: str) -> Progress:
    last = [-1]

    def report(done: int, total: int | None) -> None:
        step = done * 20 // total if total else done // (50 * CHUNK)
        if step != last[0]:
            last[0] = step
            size = f"{done / 2**20:.0f}/{total / 2**20:.0f} MB" if total else f"{done / 2**20:.0f} MB"
            print(f"\rdownloading {name}: {size}", end="", file=sys.stderr, flush=True)
            if total and done >= total:
                print(file=sys.stderr)

    return report

"""A disk-backed embedding store: every slice and tile is encoded once, then reused.

Keys say what an embedding depends on, so a mismatch is a miss, never stale data:

- the *model*: registry name + checkpoint content id (one zarr group per model, with the
  store format in its name);
- the *pixels the encoder saw*: a hash of the plane or tile (shape, dtype, bytes), the
  contrast limits that mapped them to 0-255, and ``PREPROCESS_VERSION`` (bumped whenever
  the preprocessing in ``transforms`` changes what the model sees).

Content keys make the store position-free: a slice is found again after a reopen, a
crop or a reordering, identical blank slices share one entry, and changing one voxel
changes that slice's key only. The slice index and tile box are kept as attributes of
each entry for inspection.

Layout (zarr v3, one directory per entry)::

    <root>/zarr.json                         {"napari_sam_hq_store": STORE_FORMAT}
    <root>/v1-<model>-<checkpoint id>/<key>/
        image_embedding   1 x 256 x 64 x 64
        hq_features       1 x 32 x 256 x 256   (decoder-ready: no recomputation on reopen)
        zarr.json         original_size, input_size, slice, tile, "complete": true

An entry is written under a temporary name and renamed into place, so a crash mid-write
leaves no entry that looks complete, and a partly filled store resumes where it stopped.
Chunks carry zstd checksums; an entry that fails to read (truncated, corrupt, wrong shape)
(or has a missing chunk: arrays are filled with NaN) is reported with a ``StoreWarning``,
deleted and recomputed by the caller.

Only ``max_in_memory`` entries stay in RAM (least recently used first out).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..prediction.embedding import ImageEmbedding

STORE_FORMAT = 1
PREPROCESS_VERSION = 1
STORED_ARRAYS = ("image_embedding", "hq_features")


class StoreWarning(UserWarning):
    """An entry could not be read and will be recomputed."""


def content_key(pixels: np.ndarray, contrast_limits: tuple[float, float] | None) -> str:
    """The store key of the pixels an encoder sees (a plane or a tile) under ``contrast_limits``."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"p{PREPROCESS_VERSION}|{pixels.shape}|{pixels.dtype.str}|{contrast_limits}|".encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.hexdigest()


def default_store_root() -> Path:
    """``<cache folder>/embeddings`` (the checkpoint cache, ``$NAPARI_SAM_HQ_CACHE``)."""
    from ...model.download import cache_dir

    return cache_dir() / "embeddings"


class EmbeddingStore:
    """Embeddings by (model, content key) on disk (``root``) or, with ``root=None``, in RAM only.

    ``dtype`` is the storage dtype (float16 halves the disk and RAM cost; see
    docs/volumes.md for its measured effect on masks). Thread-safe.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        dtype: np.dtype | type = np.float16,
        max_in_memory: int = 16,
    ) -> None:
        if max_in_memory < 1:
            raise ValueError(f"max_in_memory must be at least 1, got {max_in_memory}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32):
            raise ValueError(f"store dtype must be float16 or float32, got {self.dtype}")
        self.max_in_memory = max_in_memory
        self.root = None if root is None else Path(root).expanduser()
        self._memory: OrderedDict[tuple[str, str], ImageEmbedding] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = self.misses = self.writes = 0
        if self.root is not None:
            self._open_root()

    # ------------------------------------------------------------------ layout

    def _open_root(self) -> None:
        import zarr

        root = self.root
        assert root is not None
        if root.exists() and not root.is_dir():
            raise ValueError(f"embedding store {root} is a file, not a folder: choose another path")
        if root.is_dir() and any(root.iterdir()) and not (root / "zarr.json").is_file():
            raise ValueError(
                f"{root} is a non-empty folder that is not an embedding store: choose an empty or new folder"
            )
        group = zarr.open_group(root, mode="a")
        fmt = group.attrs.get("napari_sam_hq_store")
        if fmt is None:
            group.attrs["napari_sam_hq_store"] = STORE_FORMAT

    @staticmethod
    def model_id(model_name: str, checkpoint_id: str) -> str:
        return f"v{STORE_FORMAT}-{model_name}-{checkpoint_id}"

    def _entry_path(self, model: str, key: str) -> Path:
        assert self.root is not None
        return self.root / model / key

    # ------------------------------------------------------------------ access

    def get(self, model: str, key: str) -> ImageEmbedding | None:
        """The entry, or ``None`` when it is missing (or was unreadable and has been removed)."""
        with self._lock:
            hit = self._memory.get((model, key))
            if hit is not None:
                self._memory.move_to_end((model, key))
                self.hits += 1
                return hit
        emb = self._read(model, key) if self.root is not None else None
        with self._lock:
            if emb is None:
                self.misses += 1
                return None
            self.hits += 1
            self._remember(model, key, emb)
        return emb

    def __contains__(self, item: tuple[str, str]) -> bool:
        model, key = item
        with self._lock:
            if item in self._memory:
                return True
        return self.root is not None and (self._entry_path(model, key) / "zarr.json").is_file()

    def put(
        self,
        model: str,
        key: str,
        emb: ImageEmbedding,
        *,
        slice_key: tuple[int, ...] | None = None,
        tile: tuple[int, int, int, int] | None = None,
    ) -> ImageEmbedding:
        """Store ``emb`` (its image embedding and HQ features, in the store dtype); returns
        the stored form, which is what later ``get`` calls return."""
        if emb.hq_features is None:
            raise ValueError("store embeddings with their HQ features (get_image_embedding(hq=True))")
        stored = ImageEmbedding(
            image_embedding=np.asarray(emb.image_embedding, self.dtype),
            early_feature=None,
            original_size=tuple(emb.original_size),
            input_size=tuple(emb.input_size),
            model_name=emb.model_name,
            checkpoint_id=emb.checkpoint_id,
            hq_features=np.asarray(emb.hq_features, self.dtype),
        )
        if self.root is not None:
            self._write(model, key, stored, slice_key=slice_key, tile=tile)
        with self._lock:
            self.writes += 1
            self._remember(model, key, stored)
        return stored

    def _remember(self, model: str, key: str, emb: ImageEmbedding) -> None:
        self._memory[(model, key)] = emb
        self._memory.move_to_end((model, key))
        while len(self._memory) > self.max_in_memory:
            self._memory.popitem(last=False)

    @property
    def in_memory(self) -> int:
        return len(self._memory)

    def drop_memory(self) -> None:
        with self._lock:
            self._memory.clear()

    # ------------------------------------------------------------------ disk

    def _write(self, model: str, key: str, emb: ImageEmbedding, *, slice_key, tile) -> None:
        import zarr
        from zarr.codecs import ZstdCodec

        final = self._entry_path(model, key)
        if (final / "zarr.json").is_file():
            return  # another writer (thread, process) got there first: same content, same result
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            group = zarr.open_group(tmp, mode="w")
            for name in STORED_ARRAYS:
                data = getattr(emb, name)
                # fill NaN + every chunk written: a chunk file that goes missing reads as NaN
                # (caught below), never as silent zeros
                group.create_array(
                    name, data=data, chunks=data.shape, fill_value=np.nan,
                    compressors=ZstdCodec(level=1, checksum=True), config={"write_empty_chunks": True},
                )
            group.attrs.update(
                {
                    "original_size": list(emb.original_size),
                    "input_size": list(emb.input_size),
                    "model_name": emb.model_name,
                    "checkpoint_id": emb.checkpoint_id,
                    "slice": None if slice_key is None else list(slice_key),
                    "tile": None if tile is None else list(tile),
                    "complete": True,
                }
            )
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "zarr.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _read(self, model: str, key: str) -> ImageEmbedding | None:
        import zarr

        path = self._entry_path(model, key)
        if not path.exists():
            return None
        try:
            group = zarr.open_group(path, mode="r")
            attrs = dict(group.attrs)
            if not attrs.get("complete"):
                raise ValueError("the entry was never finished")
            arrays = {name: np.asarray(group[name][...]) for name in STORED_ARRAYS}
            if arrays["image_embedding"].shape != (1, 256, 64, 64) or arrays["hq_features"].shape != (1, 32, 256, 256):
                raise ValueError(f"unexpected shapes {[a.shape for a in arrays.values()]}")
            if not all(np.isfinite(a).all() for a in arrays.values()):
                raise ValueError("missing chunks or non-finite values")
            return ImageEmbedding(
                image_embedding=arrays["image_embedding"],
                early_feature=None,
                original_size=tuple(attrs["original_size"]),
                input_size=tuple(attrs["input_size"]),
                model_name=attrs["model_name"],
                checkpoint_id=attrs["checkpoint_id"],
                hq_features=arrays["hq_features"],
            )
        except Exception as err:  # zarr, codecs and json raise many types on damaged files
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            warnings.warn(
                f"embedding store entry {path} is unreadable ({reason}); it was removed and will be recomputed",
                StoreWarning,
                stacklevel=3,
            )
            shutil.rmtree(path, ignore_errors=True)
            return None

    def size_bytes(self) -> int:
        """Bytes on disk (0 for a RAM-only store)."""
        if self.root is None or not self.root.exists():
            return 0
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def entries(self, model: str) -> list[str]:
        """Keys of the complete entries of ``model`` on disk."""
        if self.root is None or not (self.root / model).is_dir():
            return []
        entries = (self.root / model).iterdir()
        return sorted(p.name for p in entries if (p / "zarr.json").is_file() and not p.name.startswith("."))

"""``SegmentationSession``: one image (a plane or a stack of planes), a model, a store, tiles.

Frames: ``data`` is ``(*lead, H, W)`` or, with ``rgb=True``, ``(*lead, H, W, C)``. A
*slice key* is the tuple of the leading indices (``()`` for a 2D image); each slice is
a plane of ``H x W`` pixels. Prompts and masks are in plane pixels: points (x, y), boxes
XYXY, masks ``H x W`` bool. Tiles and their frames are handled here (see ``tiling``).

Embeddings live in an ``EmbeddingStore`` under content keys (``store.content_key``), so
a slice whose pixels changed is re-encoded and a reopened image is not. Slices are read
from ``data`` only when needed (``np.asarray(data[key])``), so a memory-mapped TIFF, a
zarr or a dask array is never loaded whole. Decoder-ready predictors are kept for the
``max_ready`` most recent tiles; the store keeps ``max_in_memory`` more in RAM; the rest
is on disk. Thread-safe: one thread may encode while another decodes.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...model.lazy import LazyModel
from ...model.steps import exhaust
from ..masks import mask_box, pack, unpack
from . import memory
from .orientation import OrientedArray
from .store import EmbeddingStore, content_key
from .tiling import Tile, TileGrid, prompt_extent

if TYPE_CHECKING:
    from ..prediction.predictor import SamHQPredictor

SliceKey = tuple[int, ...]


@dataclass(frozen=True)
class ObjectMask:
    """One object on one plane: ``mask`` H x W bool (plane frame), the predicted IoU ``score``,
    ``low_res_logits`` 256 x 256 in the frame of ``tile`` (feed back with the same tile).
    ``pending``: the tile that would answer better (the mask is cut at an inner edge of
    ``tile``) when a decode that may not encode found it missing from the store."""

    mask: np.ndarray
    score: float
    low_res_logits: np.ndarray
    tile: Tile
    pending: Tile | None = None

    def packed(self) -> PackedObjectMask:
        """The same object in a few KB (its mask's box, compressed): for results kept in
        numbers, such as a propagation's, where full-plane masks would add up to GBs."""
        box = mask_box(self.mask)
        crop = None if box is None else pack(self.mask[box[0] : box[2], box[1] : box[3]])
        return PackedObjectMask(self.mask.shape, box, crop, self.score, self.low_res_logits, self.tile, self.pending)


@dataclass(frozen=True)
class PackedObjectMask:
    """An ``ObjectMask`` kept small: the box ``(y0, x0, y1, x1)`` of its mask and the packed
    crop; ``mask`` unpacks the ``H x W`` plane mask on each access."""

    shape: tuple[int, int]
    box: tuple[int, int, int, int] | None
    crop: tuple | None
    score: float
    low_res_logits: np.ndarray
    tile: Tile
    pending: Tile | None = None

    @property
    def mask(self) -> np.ndarray:
        out = np.zeros(self.shape, bool)
        if self.box is not None:
            y0, x0, y1, x1 = self.box
            out[y0:y1, x0:x1] = unpack(self.crop)
        return out


class SegmentationSession:
    """Interactive SAM-HQ over a plane or a stack, with a store and tiling.

    >>> session = SegmentationSession(load_model("vit_b"), stack, store=EmbeddingStore("emb.zarr"))
    >>> for fraction, key in session.iter_embed([(10,)]):  # or exhaust(...)
    ...     pass
    >>> [obj] = session.segment((10,), [{"box": [40, 40, 120, 110]}])
    >>> obj.mask  # H x W bool on slice 10
    """

    def __init__(
        self,
        model: Any,
        data: Any,
        *,
        rgb: bool = False,
        store: EmbeddingStore | None = None,
        tile_size: int = 1024,
        overlap: int = 256,
        contrast_limits: tuple[float, float] | None = None,
        max_ready: int = 4,
        predictor_factory: Callable[[Any], SamHQPredictor] | None = None,
        embed_batch: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in data.shape)
        n_lead = len(shape) - (3 if rgb else 2)
        if n_lead < 0:
            raise ValueError(
                f"data of shape {shape} is not (..., H, W)" + (" x C (rgb)" if rgb else "")
                + ": give a 2D image or a stack of 2D planes"
            )
        self._model = model
        self.data = data
        self.rgb = rgb
        self.lead_shape = shape[:n_lead]
        self.plane_shape = shape[n_lead : n_lead + 2]
        self.grid = TileGrid(self.plane_shape, tile_size=tile_size, overlap=overlap)
        self.store = store if store is not None else EmbeddingStore(None)
        self.contrast_limits = contrast_limits
        self.model_id = EmbeddingStore.model_id(model.name, model.checkpoint_id)
        self._factory = predictor_factory or _default_predictor
        self._ready: OrderedDict[str, SamHQPredictor] = OrderedDict()
        self._max_ready = max_ready
        self._ready_caps: list[int] = []  # lower limits while bulk work runs (ready_at_most)
        if embed_batch is not None and embed_batch < 1:
            raise ValueError(f"embed_batch must be at least 1, got {embed_batch}")
        self._embed_batch = embed_batch
        self._lock = threading.RLock()

    @property
    def model(self) -> Any:
        """The model; a ``LazyModel`` is loaded here, on the first encode or decode."""
        return self._model.load() if isinstance(self._model, LazyModel) else self._model

    # ------------------------------------------------------------------ slices

    @property
    def keys(self) -> list[SliceKey]:
        return [tuple(int(i) for i in idx) for idx in np.ndindex(*self.lead_shape)] if self.lead_shape else [()]

    def check_key(self, key: SliceKey) -> SliceKey:
        key = tuple(int(k) for k in key)
        if len(key) != len(self.lead_shape) or any(not 0 <= k < n for k, n in zip(key, self.lead_shape, strict=True)):
            raise IndexError(f"slice {key} is not in a stack of shape {self.lead_shape}")
        return key

    def plane(self, key: SliceKey) -> np.ndarray:
        """The plane at ``key``: ``H x W`` (or ``H x W x C``), read now."""
        return plane_of(self.data, self.check_key(key))

    def is_whole(self, tile: Tile) -> bool:
        """Whether ``tile`` is the whole plane (its frame is the plane's)."""
        return tile.coarse or tile.box == (0, 0, *self.plane_shape)

    def _limits(self, plane: np.ndarray, whole: bool) -> tuple[float, float] | None:
        """Contrast limits of a tile: shared by all parts of a plane, so tiles and crops see
        the same intensity mapping. ``None`` (the engine's per-image rule) for uint8 and for
        the whole plane, which is then exactly ``set_image(plane)``."""
        if self.contrast_limits is not None:
            return tuple(float(v) for v in self.contrast_limits)
        if whole or not self._limits_from_plane(plane.dtype):
            return None
        finite = plane[np.isfinite(plane)] if plane.dtype.kind == "f" else plane
        if finite.size == 0:
            return (0.0, 0.0)
        return (float(finite.min()), float(finite.max()))

    def _limits_from_plane(self, dtype: Any) -> bool:
        """Whether a tile's contrast limits are its plane's minimum and maximum (none given,
        not uint8), so that reading the tile needs the whole plane."""
        return self.contrast_limits is None and np.dtype(dtype) != np.uint8

    def entry_lookup(self, plane: np.ndarray) -> Callable[[Tile], tuple[str, np.ndarray, tuple | None]]:
        """``tile -> (store key, pixels, contrast limits)`` for one plane read once; each tile's
        hash and the plane's shared limits are computed once, however often a tile is asked for."""
        memo: dict[Tile, tuple[str, np.ndarray, tuple | None]] = {}
        part_limits: list = []

        def lookup(tile: Tile):
            if tile not in memo:
                if self.is_whole(tile):
                    pixels, limits = plane, self._limits(plane, True)
                else:
                    if not part_limits:
                        part_limits.append(self._limits(plane, False))
                    pixels, limits = plane[tile.slices], part_limits[0]
                memo[tile] = (content_key(pixels, limits), pixels, limits)
            return memo[tile]

        return lookup

    def region_lookup(self, key: SliceKey) -> Callable[[Tile], tuple[str, np.ndarray, tuple | None]]:
        """``entry_lookup`` of slice ``key`` that reads each tile's own pixels when it is first
        asked for, not the plane: for bulk work that needs one or two tiles of each slice (a
        propagation). A 4096 x 4096 plane of 1024-pixel chunks is 16 chunks and 32 MB
        (uint16); a tile is at most 4 chunks. The whole plane is read when a tile needs it:
        the coarse tile, or contrast limits shared by the plane's parts (none given and not
        uint8). numpy data is read as views of the plane (it costs nothing)."""
        key = self.check_key(key)
        if isinstance(self.data, np.ndarray) or self._limits_from_plane(self.data.dtype):
            return self.entry_lookup(self.plane(key))
        memo: dict[Tile, tuple[str, np.ndarray, tuple | None]] = {}
        whole: list[Callable] = []

        def lookup(tile: Tile):
            if tile not in memo:
                if self.is_whole(tile):
                    if not whole:
                        whole.append(self.entry_lookup(self.plane(key)))
                    memo[tile] = whole[0](tile)
                else:
                    pixels = region_of(self.data, key, *tile.slices)
                    limits = self._limits(pixels, False)  # the given limits, or uint8's None
                    memo[tile] = (content_key(pixels, limits), pixels, limits)
            return memo[tile]

        return lookup

    def _entries(self, key: SliceKey, tiles: Iterable[Tile]):
        """``(tile, store key, pixels, contrast limits)`` for tiles of one plane."""
        lookup = self.entry_lookup(self.plane(key))
        for tile in tiles:
            yield (tile, *lookup(tile))

    def entry_keys(self, key: SliceKey, *, coarse: bool = False) -> list[tuple[Tile, str]]:
        """``(tile, store key)`` of every tile of slice ``key`` (what ``iter_embed`` stores)."""
        tiles = self.grid.tiles if coarse else self.grid_tiles()
        return [(tile, entry) for tile, entry, _, _ in self._entries(key, tiles)]

    def grid_tiles(self) -> list[Tile]:
        """The tiles every slice is encoded with (the coarse tile is encoded on demand)."""
        tiles = self.grid.tiles
        return tiles[:-1] if self.grid.tiled else tiles

    def is_ready(self, key: SliceKey) -> bool:
        """Whether every grid tile of slice ``key`` is in the store (no encoding needed)."""
        return all((self.model_id, k) in self.store for _, k, _, _ in self._entries(key, self.grid_tiles()))

    def is_stored(self, key: SliceKey, tile: Tile, lookup=None) -> bool:
        """Whether ``tile`` of slice ``key`` can be decoded without encoding (stored or ready)."""
        entry = (lookup or self.entry_lookup(self.plane(key)))(tile)[0]
        with self._lock:
            if entry in self._ready:
                return True
        return (self.model_id, entry) in self.store

    def choose_tile(self, obj: dict) -> Tile:
        """The tile that answers the prompt ``obj`` (``point_coords`` / ``box``, plane pixels)."""
        return self.grid.choose(prompt_extent(obj.get("point_coords"), obj.get("box")))

    def tiles_by_distance(self, xy: tuple[float, float] | None = None) -> list[Tile]:
        """The grid tiles, the one whose centre is nearest ``xy`` (plane pixels; default the
        plane's centre) first: the encoding order that brings the first object soonest."""
        h, w = self.plane_shape
        x, y = (w / 2, h / 2) if xy is None else xy

        def dist(t: Tile) -> float:
            return ((t.x0 + t.x1) / 2 - x) ** 2 + ((t.y0 + t.y1) / 2 - y) ** 2

        return sorted(self.grid_tiles(), key=dist)

    # ------------------------------------------------------------------ encoding

    def iter_embed(
        self, keys: Iterable[SliceKey] | None = None, *, coarse: bool = False
    ) -> Generator[tuple[float, SliceKey], None, int]:
        """Encode the tiles of ``keys`` (default: all slices) that the store lacks.

        Yields ``(fraction done, slice key)`` after every encoder step; returns how many
        tiles were encoded. Stopping the generator loses at most the tile in progress.
        """
        keys = self.keys if keys is None else [self.check_key(k) for k in keys]
        tiles = self.grid.tiles if coarse else self.grid_tiles()
        if self.embed_batch > 1:
            return (yield from self._iter_embed_batched(keys, tiles))
        per_key = len(tiles)
        total = max(1, len(keys) * per_key)
        encoded = 0
        for i, key in enumerate(keys):
            lookup = self.entry_lookup(self.plane(key))
            for j, tile in enumerate(tiles):
                done = i * per_key + j
                gen = self.iter_embed_tile(key, tile, lookup)
                try:
                    while True:
                        yield (done + next(gen)) / total, key
                except StopIteration as stop:
                    encoded += int(stop.value)
                yield (done + 1) / total, key
        return encoded

    def check_labels(self, labels: Any, keys: Iterable[SliceKey] | None = None) -> list[SliceKey]:
        """``keys`` (default: every slice), checked, for an integer label image of this
        session's ``(*lead, H, W)`` shape; wrong shapes and non-integer labels are refused.
        Read its planes with ``plane_of(labels, key)``."""
        shape = tuple(int(s) for s in labels.shape)
        expected = (*self.lead_shape, *self.plane_shape)
        if shape != expected:
            raise ValueError(f"the labels have shape {shape}, the image {expected}: use the labels of this image")
        if np.dtype(labels.dtype).kind not in "iu":
            raise ValueError(f"labels must be integers, got {labels.dtype}: a label image, not a probability map")
        return [self.check_key(k) for k in (self.keys if keys is None else keys)]

    @property
    def embed_batch(self) -> int:
        """Tiles per encoder call in ``iter_embed``: ``batch`` if given, else 1 on the CPU (a
        bigger batch only adds memory there) and 4 on a GPU (throughput)."""
        if self._embed_batch is not None:
            return self._embed_batch
        model = self._model
        if isinstance(model, LazyModel) and not model.loaded:
            # no load (nor torch import) to find out: a GPU only when one was asked for by name
            return 4 if str(model.device).startswith(("cuda", "mps")) else 1
        device = getattr(model, "device", None)
        return 1 if device is None or getattr(device, "type", "cpu") == "cpu" else 4

    def _iter_embed_batched(
        self, keys: list[SliceKey], tiles: list[Tile]
    ) -> Generator[tuple[float, SliceKey], None, int]:
        """``iter_embed`` with ``embed_batch`` tiles per encoder call; the next batch's planes are
        read and prepared on a thread while the device encodes (I/O off the critical path)."""
        from concurrent.futures import ThreadPoolExecutor

        todo = [(key, tile) for key in keys for tile in tiles]
        n = self.embed_batch
        batches = [todo[i : i + n] for i in range(0, len(todo), n)]

        def prepare(batch):
            out, lookups = [], {}
            for key, tile in batch:
                if key not in lookups:
                    lookups[key] = self.entry_lookup(self.plane(key))
                entry, pixels, limits = lookups[key](tile)
                if self.store.get(self.model_id, entry) is None:
                    out.append((key, tile, entry, pixels, limits))
            return out

        encoded = done = 0
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(prepare, batches[0]) if batches else None
            for b, batch in enumerate(batches):
                ready = nxt.result()
                nxt = pool.submit(prepare, batches[b + 1]) if b + 1 < len(batches) else None
                if ready:
                    predictor = self._factory(self.model)
                    embs = predictor.embed_batch([p for *_, p, _ in ready], contrast_limits=[lim for *_, lim in ready])
                    for (key, tile, entry, _, _), emb in zip(ready, embs, strict=True):
                        self.store.put(self.model_id, entry, emb, slice_key=key, tile=tile.box)
                    encoded += len(ready)
                    memory.trim()
                done += len(batch)
                yield done / max(1, len(todo)), batch[-1][0]
        return encoded

    def iter_embed_tile(self, key: SliceKey, tile: Tile, lookup=None) -> Generator[float, None, bool]:
        """Encode one tile of slice ``key`` unless the store has it; yields the fraction of the
        encoder done (below 1), then exactly ``1.0`` once the tile is decoder-ready (before it is
        written to the store, so a caller can decode meanwhile); returns whether it encoded."""
        key = self.check_key(key)
        entry, pixels, limits = (lookup or self.entry_lookup(self.plane(key)))(tile)
        if self.store.get(self.model_id, entry) is not None:  # read: damage is found here
            return False
        predictor = self._factory(self.model)
        for fraction in predictor.iter_set_image(pixels, contrast_limits=limits, keep_early=False):
            yield min(fraction, 0.99)
        emb = predictor.get_image_embedding(early=False)  # before a decode may use the predictor
        self._keep_ready(entry, predictor)
        yield 1.0
        self.store.put(self.model_id, entry, emb, slice_key=key, tile=tile.box)
        memory.trim()  # the encoder's temporaries back to the system: ~10 ms, see memory
        return True

    def _keep_ready(self, entry: str, predictor: SamHQPredictor) -> None:
        with self._lock:
            self._ready[entry] = predictor
            self._ready.move_to_end(entry)
            self._trim_ready()

    def _trim_ready(self) -> None:
        with self._lock:
            limit = min([self._max_ready, *self._ready_caps])
            while len(self._ready) > limit:
                self._ready.popitem(last=False)

    @contextmanager
    def ready_at_most(self, n: int) -> Iterator[None]:
        """Keep at most ``n`` decoder-ready tiles (the least recently used go now) while the
        block runs, then the session's own limit again. For bulk work that uses each tile
        once or twice, such as a propagation: the interactive plane's tiles (~18 MB each)
        would only add to its peak, and its own would push them out all the same."""
        if n < 1:
            raise ValueError(f"keep at least one decoder-ready tile, got {n}")
        with self._lock:
            before = len(self._ready)
            self._ready_caps.append(n)  # several at once (threads) lift in any order
            self._trim_ready()
            dropped = before - len(self._ready)
        if dropped:
            # their tensors are freed in the arena of the thread that encoded them, which the
            # bulk work (another thread) may not allocate from: back to the system, not kept
            memory.trim()
        try:
            yield
        finally:
            with self._lock:
                self._ready_caps.remove(n)

    def tile_predictor(self, key: SliceKey, tile: Tile, lookup=None) -> SamHQPredictor:
        """A decoder-ready predictor for one tile of slice ``key``; encodes the tile now if the
        store lacks it. ``lookup``: the plane's ``entry_lookup``, when the caller has one."""
        lookup = lookup or self.entry_lookup(self.plane(key))
        entry, pixels, limits = lookup(tile)
        with self._lock:
            predictor = self._ready.pop(entry, None)
            if predictor is not None:
                self._ready[entry] = predictor
                return predictor
        emb = self.store.get(self.model_id, entry)
        predictor = self._factory(self.model)
        if emb is None:
            predictor.set_image(pixels, contrast_limits=limits, keep_early=False)
            emb = predictor.get_image_embedding(early=False)
            self.store.put(self.model_id, entry, emb, slice_key=key, tile=tile.box)
            memory.trim()
        else:
            predictor.set_image_embedding(emb)
        self._keep_ready(entry, predictor)
        return predictor

    # ------------------------------------------------------------------ decoding

    def segment(
        self,
        key: SliceKey,
        objects: list[dict],
        *,
        multimask_output: bool = False,
        hq_token_only: bool = False,
        encode: bool = True,
        lookup: Callable[[Tile], tuple] | None = None,
    ) -> list[ObjectMask]:
        """One mask per object on slice ``key``.

        Each object is a dict of ``predict`` keywords in plane pixels (``point_coords``
        N x 2, ``point_labels`` N, ``box`` XYXY) and optionally ``mask_input`` (256 x 256
        logits) with the ``tile`` they belong to (an ``ObjectMask.tile``); a mask input
        from another tile than the one chosen is dropped. An optional ``window`` (XYXY)
        is where the object is known to lie: its mask is computed there only and is empty
        outside (``SamHQPredictor.predict_batch``). Objects with the same prompt
        layout on the same tile are decoded in one batch. A mask that reaches an inner
        tile edge is decoded again from the tile that holds it, or the coarse tile.

        ``encode=False`` (interactive previews): the first tile of each object must be
        stored (``is_stored``); a better tile that is not yet stored is not encoded here:
        the cut mask is returned with that tile as ``pending``, to encode and decode again.
        """
        return exhaust(self.iter_segment(key, objects, multimask_output=multimask_output,
                                            hq_token_only=hq_token_only, encode=encode, lookup=lookup))

    def iter_segment(
        self,
        key: SliceKey,
        objects: list[dict],
        *,
        multimask_output: bool = False,
        hq_token_only: bool = False,
        encode: bool = True,
        lookup: Callable[[Tile], tuple] | None = None,
    ) -> Generator[list[ObjectMask], None, list[ObjectMask]]:
        """``segment`` by rounds: each round decodes every object still to do from its tile.

        After a round that leaves masks cut at an inner tile edge to be decoded again, it
        yields the masks so far, the cut ones with the tile that answers next as
        ``pending`` (an interactive preview shows them while that decode runs); returns the
        final masks. A plane whose objects all fit their first tile never yields.
        """
        key = self.check_key(key)
        if not objects:
            return []
        lookup = lookup or self.entry_lookup(self.plane(key))
        results: list[ObjectMask | None] = [None] * len(objects)
        todo = list(range(len(objects)))
        tried: dict[int, tuple[Tile, ...]] = {i: () for i in todo}
        tile_for = {i: self.grid.choose(prompt_extent(objects[i].get("point_coords"), objects[i].get("box")))
                    for i in todo}
        while todo:
            groups: dict[tuple, list[int]] = {}
            for i in todo:
                obj = objects[i]
                use_mask = obj.get("mask_input") is not None and obj.get("tile") == tile_for[i]
                layout = (
                    tile_for[i],
                    obj.get("box") is not None,
                    None if obj.get("point_coords") is None else len(obj["point_coords"]),
                    use_mask,
                    obj.get("window") is not None,
                )
                groups.setdefault(layout, []).append(i)
            retry = []
            for (tile, has_box, n_points, use_mask, has_window), members in groups.items():
                out = self._decode(key, lookup, tile, [objects[i] for i in members], has_box, n_points,
                                   use_mask, multimask_output, hq_token_only, has_window)
                for i, result in zip(members, out, strict=True):
                    tried[i] += (tile,)
                    results[i] = result
                    if not self.is_whole(tile) and tile.touches_inner_edge(
                        result.mask[tile.slices], self.plane_shape
                    ):
                        # cut by the tile border: ask the tile that holds the whole mask
                        extent = prompt_extent(objects[i].get("point_coords"), objects[i].get("box"), result.mask)
                        nxt = self.grid.choose(extent, exclude=tried[i])
                        if nxt in tried[i]:
                            continue
                        results[i] = dataclasses.replace(result, pending=nxt)
                        if not encode and not self.is_stored(key, nxt, lookup):
                            continue
                        tile_for[i] = nxt
                        retry.append(i)
            if retry:
                yield [r for r in results if r is not None]
            todo = retry
        return [r for r in results if r is not None]

    def _decode(self, key, lookup, tile, objs, has_box, n_points, use_mask, multimask, hq_only,
                has_window=False) -> list[ObjectMask]:
        predictor = self.tile_predictor(key, tile, lookup)
        whole = self.is_whole(tile)
        origin = np.zeros(2) if whole else tile.origin_xy
        kwargs: dict[str, Any] = {}

        def xyxy(name: str) -> np.ndarray:  # the objects' boxes or windows, in the tile's pixels
            return np.stack([np.asarray(o[name], float).ravel() - np.tile(origin, 2) for o in objs])

        if n_points is not None:
            kwargs["point_coords"] = np.stack([np.asarray(o["point_coords"], float) - origin for o in objs])
            kwargs["point_labels"] = np.stack([np.asarray(o["point_labels"]) for o in objs])
        if has_box:
            kwargs["boxes"] = xyxy("box")
        if use_mask:
            kwargs["mask_input"] = np.stack([np.asarray(o["mask_input"], np.float32) for o in objs])
        if has_window:
            kwargs["windows"] = xyxy("window")
        if not whole:
            h, w = tile.y1 - tile.y0, tile.x1 - tile.x0
            kwargs = _clip_to_tile(kwargs, h, w)
        batch = predictor.predict_batch(**kwargs, multimask_output=multimask, hq_token_only=hq_only)
        out = []
        for j in range(len(objs)):
            if not whole:
                mask = np.zeros(self.plane_shape, bool)
                mask[tile.slices] = batch.masks[j, 0]
            else:
                mask = batch.masks[j, 0]
            out.append(ObjectMask(mask, float(batch.scores[j, 0]), batch.low_res_logits[j, 0], tile))
        return out


def plane_of(data: Any, key: SliceKey) -> np.ndarray:
    """The plane at slice ``key`` of a ``(*lead, H, W[, C])`` array (numpy, zarr, dask, an
    oriented view), read now; ``()`` is the whole of a 2D image."""
    return np.asarray(data[key] if key else data[...])


def region_of(data: Any, key: SliceKey, rows: slice, cols: slice) -> np.ndarray:
    """``plane_of(data, key)[rows, cols]``, reading only that region of a lazy array (zarr,
    dask, an oriented view)."""
    if isinstance(data, OrientedArray):
        return data.region(key, rows, cols)
    return np.asarray(data[(*key, rows, cols)])


def _clip_to_tile(kwargs: dict, h: int, w: int) -> dict:
    """Points, boxes and windows in tile pixels, clipped onto the tile (a box or window
    may reach past it)."""
    for name in ("boxes", "windows"):
        if name in kwargs:
            b = kwargs[name].copy()
            b[:, [0, 2]] = b[:, [0, 2]].clip(-0.5, w - 0.5)
            b[:, [1, 3]] = b[:, [1, 3]].clip(-0.5, h - 0.5)
            kwargs[name] = b
    if "point_coords" in kwargs:
        p = kwargs["point_coords"].copy()
        p[..., 0] = p[..., 0].clip(-0.5, w - 0.5)
        p[..., 1] = p[..., 1].clip(-0.5, h - 0.5)
        kwargs["point_coords"] = p
    return kwargs


def _default_predictor(model: Any) -> SamHQPredictor:
    from ..prediction.predictor import SamHQPredictor  # torch: imported when a model is first needed

    return SamHQPredictor(model)

"""``Annotator``: interactive annotation of one image, without Qt or a viewer.

It holds what an annotation session is: the image and the plane orientation being
segmented, one ``SegmentationSession`` per orientation, the queue of tiles to encode
(the tile under a prompt first), the prompts and their decoded preview, and the label
image with its bookkeeping (``LabelVolume``: id counter, extents, committed seeds).
The napari widget binds layers and buttons to it; scripts and tests drive it directly.

Frames: ``data`` is the image in its data frame ``(*spatial, [C])``; everything the
annotator takes and returns per slice is in the *oriented frame* of its current
``orientation`` (see ``orientation``): slice keys index the slicing axes, prompts are
plane (x, y) pixels, masks ``H x W`` bool. Labels are written through the orientation,
into the data frame.

Threads: ``iter_encode`` / ``encode_next`` may run in one worker thread and ``decode`` in
another while the GUI thread queues work, commits and undoes; the queue, the preview and
the label writes are locked. A tool's run (a propagation) goes ``in_front`` of the queue:
the queue waits, except for the tiles a preview waits for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...model.steps import exhaust
from ..masks import mask_box
from ..volumes import memory
from ..volumes.orientation import Orientation
from ..volumes.session import ObjectMask, SegmentationSession, SliceKey
from ..volumes.tiling import Tile
from .labels import LabelVolume


@dataclass
class SlicePrompts:
    """Prompts on one slice, in plane (x, y) pixels: points with labels (1 positive,
    0 negative) and XYXY boxes."""

    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    def objects(self) -> list[dict]:
        """One prompt dict per object (``predict`` keyword arguments).

        Rule: every box is an object, refined by the points inside it; the points inside
        no box form one more object (if any of them is positive).
        """
        pts = np.asarray(self.points, float).reshape(-1, 2)
        labels = np.asarray(self.labels, int)
        used = np.zeros(len(pts), bool)
        objects = []
        for box in self.boxes:
            x0, y0, x1, y1 = box
            inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
            used |= inside
            obj: dict = {"box": np.array(box, float)}
            if inside.any():
                obj.update(point_coords=pts[inside], point_labels=labels[inside])
            objects.append(obj)
        rest = ~used
        if rest.any() and (labels[rest] == 1).any():
            objects.append({"point_coords": pts[rest], "point_labels": labels[rest]})
        return objects


@dataclass(frozen=True)
class PreviewObject:
    """A decoded object on one slice: ``mask`` H x W bool (oriented plane), its predicted IoU,
    whether it came from points only (points-only objects on several slices are one object),
    and whether a better tile is still being encoded (it is decoded again when it is)."""

    mask: np.ndarray
    score: float
    points_only: bool
    pending: bool = False


@dataclass(frozen=True)
class EncodeStep:
    """Progress of ``encode_next``: ``fraction`` of the queue seen so far, the tile (of slice
    ``key`` in ``orientation``) being encoded, and whether it is now stored (``done``).
    ``held``: nothing is encoded yet, the queue waits for a tool's run (``in_front``);
    ``key`` is then the next slice queued and ``tile`` may be ``None`` (its nearest)."""

    fraction: float
    key: SliceKey
    tile: Tile | None
    orientation: Orientation
    done: bool
    held: bool = False


Preview = dict[SliceKey, list[PreviewObject]]
_LOOKUP_BYTES = 64 << 20  # planes of lazy data kept read (the slices on screen; a neighbour reads a tile)


class Annotator:
    """Annotation of one image (2D, a stack, any number of slicing axes).

    >>> ann = Annotator(stack, model=load_model("vit_tiny"), labels=LabelVolume(np.zeros(stack.shape, np.uint32)))
    >>> ann.request([(150,)], near=(900, 400))         # the tile under the prompt first
    >>> exhaust(ann.iter_encode())                      # or step it in a worker
    >>> ann.decode({(150,): SlicePrompts(points=[(900, 400)], labels=[1])})
    >>> ann.commit()                                    # -> [new id]
    """

    def __init__(
        self,
        data: Any,
        *,
        rgb: bool = False,
        model: Any = None,
        store: Any = None,
        labels: LabelVolume | None = None,
        tile_size: int = 1024,
        overlap: int = 256,
        max_ready: int = 4,
        contrast_limits: tuple[float, float] | None = None,
        predictor_factory: Any = None,
    ) -> None:
        self.data = data
        self.rgb = rgb
        self.spatial_shape = tuple(int(s) for s in (data.shape[:-1] if rgb else data.shape))
        if len(self.spatial_shape) < 2:
            raise ValueError(f"an image of shape {tuple(data.shape)} has no plane: give a 2D image or a stack")
        self.model = model
        self.store = store
        self.labels = labels
        self.tile_size = tile_size
        self.overlap = min(overlap, tile_size // 2)
        self.max_ready = max_ready
        self.contrast_limits = contrast_limits
        self.predictor_factory = predictor_factory
        self.orientation = Orientation.default(len(self.spatial_shape))
        self.preview: Preview = {}
        self.waiting: set[SliceKey] = set()  # slices whose preview waits for a tile
        self._sessions: dict[Orientation, SegmentationSession] = {}
        self._queue: list[tuple[Orientation, SliceKey, Tile | None, tuple[float, float] | None]] = []
        self._done = 0  # tiles encoded since the queue was last empty (for progress)
        self._lookups: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.RLock()
        self._in_front = 0  # tools' runs going on (``in_front``): the queue waits for them
        self._front_done = threading.Condition(self._lock)

    # ------------------------------------------------------------------ model, orientation

    def set_model(self, model: Any) -> None:
        """Use ``model`` (a model or a ``LazyModel``) from now on; queued work stays queued."""
        with self._lock:
            if model is not self.model:
                self.model = model
                self._sessions.clear()
                self._lookups.clear()
                self.preview, self.waiting = {}, set()

    def set_orientation(self, plane_axes: tuple[int, int]) -> bool:
        """Segment the plane of data axes ``plane_axes`` from now on; returns whether it changed.
        The preview is dropped (it belongs to the old planes); embeddings of every orientation
        stay stored."""
        orientation = Orientation(len(self.spatial_shape), tuple(plane_axes))
        with self._lock:
            if orientation == self.orientation:
                return False
            self.orientation = orientation
            self.preview, self.waiting = {}, set()
            return True

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return self.orientation.oriented_shape(self.spatial_shape)[:-2]

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.orientation.oriented_shape(self.spatial_shape)[-2:]

    @property
    def keys(self) -> list[SliceKey]:
        return [tuple(int(i) for i in idx) for idx in np.ndindex(*self.lead_shape)] if self.lead_shape else [()]

    def session_for(self, orientation: Orientation | None = None) -> SegmentationSession:
        """The engine session of ``orientation`` (default: the current one)."""
        orientation = orientation or self.orientation
        if self.model is None:
            raise RuntimeError("no model yet: choose one (set_model) before encoding or decoding")
        with self._lock:
            session = self._sessions.get(orientation)
            if session is None:
                session = self._sessions[orientation] = SegmentationSession(
                    self.model, orientation.view(self.data, rgb=self.rgb), rgb=self.rgb, store=self.store,
                    tile_size=self.tile_size, overlap=self.overlap, max_ready=self.max_ready,
                    contrast_limits=self.contrast_limits, predictor_factory=self.predictor_factory,
                )
            return session

    @property
    def session(self) -> SegmentationSession:
        return self.session_for()

    def _lookup(self, session: SegmentationSession, orientation: Orientation, key: SliceKey):
        """The plane's tile -> store-key lookup. numpy data is read and hashed every time (an
        edit in place is never served stale); lazy data (dask, zarr) once per slice, here."""
        if isinstance(self.data, np.ndarray):
            return session.entry_lookup(session.plane(key))
        cache_key = (orientation, id(session), key)
        with self._lock:
            hit = self._lookups.get(cache_key)
            if hit is not None:
                self._lookups.move_to_end(cache_key)
                return hit
        plane = session.plane(key)
        lookup = session.entry_lookup(plane)
        # each holds its plane: up to 4, within _LOOKUP_BYTES (2 of 4096 x 4096 uint16)
        keep = max(1, min(4, _LOOKUP_BYTES // max(1, plane.nbytes)))
        with self._lock:
            self._lookups[cache_key] = lookup
            while len(self._lookups) > keep:
                self._lookups.popitem(last=False)
        return lookup

    def _job_lookup(self, session: SegmentationSession, orientation: Orientation, key: SliceKey):
        """The lookup an encoded tile is read with: the plane, kept (``_lookup``), when more of
        the queue or a preview will read it; else only the tile's own region: a neighbour's
        tile in view is at most 4 chunks of a lazy 4096 x 4096 plane, not its 16."""
        with self._lock:
            alone = (
                not isinstance(self.data, np.ndarray)
                and (orientation, id(session), key) not in self._lookups
                and not (orientation == self.orientation and key in self.waiting)
                and not any(o == orientation and k == key for o, k, _, _ in self._queue)
            )
        return session.region_lookup(key) if alone else self._lookup(session, orientation, key)

    # ------------------------------------------------------------------ encoding queue

    def request(
        self,
        keys: list[SliceKey],
        *,
        near: tuple[float, float] | None = None,
        tiles: list[Tile] | None = None,
    ) -> None:
        """Encode ``keys`` (this orientation) before anything queued so far, in this order:
        each slice's grid tiles, the one nearest ``near`` (plane x, y; default the centre)
        first, or only ``tiles``. Stored tiles are skipped when their turn comes."""
        o = self.orientation
        jobs = [(o, tuple(k), t, near) for k in keys for t in (tiles or [None])]
        with self._lock:
            new = set((j[0], j[1], j[2]) for j in jobs)
            rest = [j for j in self._queue if (j[0], j[1], j[2]) not in new]
            self._queue[:] = list(dict.fromkeys(jobs)) + rest

    @property
    def pending(self) -> int:
        """Jobs in the encoding queue (a job is a tile, or a slice not yet split into tiles)."""
        with self._lock:
            return len(self._queue)

    def cancel_encoding(self) -> None:
        with self._lock:
            self._queue.clear()
            self._done = 0

    def _pop(self):
        """The next tile to encode, splitting a slice job into its tiles (nearest first)."""
        while True:
            with self._lock:
                if not self._queue:
                    self._done = 0
                    return None
                job = self._queue.pop(0)
            orientation, key, tile, near = job
            if tile is not None:
                return job
            session = self.session_for(orientation)
            with self._lock:
                self._queue[:0] = [(orientation, key, t, near) for t in session.tiles_by_distance(near)]

    def in_front(self, run: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
        """``run`` (a tool's steps: a propagation, segment everything), with the encoding
        queue waiting while it goes on; yields and returns what ``run`` does.

        Both would use the same cores (and the queue's reads and encodes its own memory):
        a propagation beside the queue took twice as long, and rose ~150 MB higher on
        4096 x 4096 slices. A tile a preview waits for (``waiting``) is still encoded.

        The planes kept read for the queue and the previews (``_lookups``, up to 64 MB) are
        let go as it starts, and the freed heap given back: the run reads its own, and its
        peak is the session's (the next prompt reads its plane again)."""
        with self._lock:
            self._in_front += 1
            self._lookups.clear()
        memory.trim()
        try:
            return (yield from run)
        finally:
            with self._lock:
                self._in_front -= 1
                self._front_done.notify_all()

    def _held(self) -> tuple[SliceKey, Tile | None, Orientation] | None:
        """The next queued job while it must wait for a tool's run, else ``None``."""
        with self._lock:
            if not self._in_front or not self._queue:
                return None
            orientation, key, tile, _ = self._queue[0]
            if orientation == self.orientation and key in self.waiting:
                return None
            return key, tile, orientation

    def encode_next(self) -> Generator[EncodeStep, None, bool]:
        """Encode the next queued tile (nothing if it is stored); yields progress after each
        encoder step; returns ``False`` when the queue was empty.

        While a tool's run is ``in_front`` (and no preview waits for that tile), it first
        yields ``held`` steps, ten a second, so a worker can still be stopped."""
        while (held := self._held()) is not None:
            yield EncodeStep(self._done / (self._done + self.pending), *held, done=False, held=True)
            with self._lock:
                if self._held() is not None:
                    self._front_done.wait(0.1)
        job = self._pop()
        if job is None:
            return False
        orientation, key, tile, _ = job
        session = self.session_for(orientation)
        lookup = self._job_lookup(session, orientation, key)
        total = self._done + 1 + self.pending
        ready = False
        for f in session.iter_embed_tile(key, tile, lookup):
            if f >= 1.0:  # decoder-ready: say so now; the store write follows
                ready = True
                self._done += 1
                yield EncodeStep(self._done / (self._done + self.pending), key, tile, orientation, True)
            else:
                yield EncodeStep((self._done + f) / total, key, tile, orientation, False)
        if not ready:  # it was stored already
            self._done += 1
            yield EncodeStep(self._done / (self._done + self.pending), key, tile, orientation, True)
        return True

    def iter_encode(self) -> Generator[EncodeStep, None, None]:
        """``encode_next`` until the queue is empty (jobs queued meanwhile are done too)."""
        while (yield from self.encode_next()):
            pass

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        prompts: dict[SliceKey, SlicePrompts],
        *,
        multimask_output: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[Preview, dict[SliceKey, str]]:
        """Decode the objects of ``prompts`` (``{slice: SlicePrompts}``, this orientation) from
        stored tiles only; becomes the ``preview``. An object whose tile is not stored is
        queued to encode first (its slice goes to ``waiting``); an object cut at an inner tile
        edge is shown and queued to decode again from the better tile. Returns the preview and
        ``{slice: message}`` for slices whose prompts the engine refused."""
        return exhaust(self.iter_decode(prompts, multimask_output=multimask_output, hq_token_only=hq_token_only))

    def iter_decode(
        self,
        prompts: dict[SliceKey, SlicePrompts],
        *,
        multimask_output: bool = False,
        hq_token_only: bool = False,
    ) -> Generator[Preview, None, tuple[Preview, dict[SliceKey, str]]]:
        """``decode`` that shows its first answer early: when an object's mask is cut at an
        inner tile edge and the tile that holds it whole (or the coarse tile) is stored, the
        preview of the first tile's answers is published and yielded (a UI draws it) before
        that second decode runs; then the final preview is published and returned with the
        errors. A decode in which every object fits its first tile yields nothing."""
        orientation = self.orientation
        session = self.session_for(orientation)
        preview: Preview = {}
        errors: dict[SliceKey, str] = {}
        waiting: set[SliceKey] = set()
        later: list[tuple[SliceKey, Any, list[dict]]] = []  # slices with a second round to run
        for key, slice_prompts in prompts.items():
            objects = slice_prompts.objects()
            if not objects:
                continue
            try:
                key = session.check_key(key)
            except IndexError as err:
                errors[key] = str(err)
                continue
            lookup = self._lookup(session, orientation, key)
            ready, missing = [], []
            for obj in objects:
                tile = session.choose_tile(obj)
                (ready if session.is_stored(key, tile, lookup) else missing).append((obj, tile))
            if missing:
                waiting.add(key)
                self.request([key], tiles=list(dict.fromkeys(t for _, t in missing)))
            if not ready:
                continue
            ready = [o for o, _ in ready]
            rounds = session.iter_segment(
                key, ready, multimask_output=multimask_output, hq_token_only=hq_token_only, encode=False,
                lookup=lookup,
            )
            if self._round(rounds, key, ready, preview, errors, waiting):  # more rounds follow
                later.append((key, rounds, ready))
        if later:
            self._publish(orientation, dict(preview), set(waiting))
            yield dict(preview)
            for key, rounds, ready in later:
                while self._round(rounds, key, ready, preview, errors, waiting):
                    pass
        self._publish(orientation, preview, waiting)
        memory.trim_if_grown()  # decodes leave freed heap behind (engine/volumes/memory.py)
        return preview, errors

    def _round(self, rounds, key: SliceKey, objects: list[dict], preview: Preview, errors: dict, waiting: set) -> bool:
        """One round of ``session.iter_segment`` for slice ``key`` into ``preview``; whether
        more rounds follow. Cut masks whose better tile is not stored queue that tile."""
        try:
            results, more = next(rounds), True
        except StopIteration as done:
            results, more = done.value, False
        except ValueError as err:
            errors[key] = str(err)
            preview.pop(key, None)
            return False
        if not more:
            better = [r.pending for r in results if r.pending is not None]
            if better:
                waiting.add(key)
                self.request([key], tiles=list(dict.fromkeys(better)))
        preview[key] = [
            PreviewObject(r.mask, r.score, "box" not in o, r.pending is not None)
            for r, o in zip(results, objects, strict=True)
        ]
        return more

    def _publish(self, orientation: Orientation, preview: Preview, waiting: set[SliceKey]) -> None:
        with self._lock:
            if orientation == self.orientation:
                self.preview, self.waiting = preview, waiting

    def preview_crop(self, key: SliceKey) -> tuple[tuple[int, int], np.ndarray] | None:
        """The preview of slice ``key`` as a small label image: ``((y0, x0), h x w uint16)``
        covering its objects only (1, 2, ... in prompt order; earlier objects on top), or
        ``None`` when the slice has none."""
        objects = self.preview.get(tuple(key), [])
        boxes = [mask_box(o.mask) for o in objects]
        boxes = [b for b in boxes if b is not None]
        if not boxes:
            return None
        y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        y1, x1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        crop = np.zeros((y1 - y0, x1 - x0), np.uint16)
        for i, obj in enumerate(objects):
            part = obj.mask[y0:y1, x0:x1]
            crop[part & (crop == 0)] = i + 1
        return (y0, x0), crop

    def clear(self) -> None:
        """Forget the preview (the prompts are the caller's)."""
        with self._lock:
            self.preview, self.waiting = {}, set()

    # ------------------------------------------------------------------ labels

    def _labels(self) -> LabelVolume:
        if self.labels is None:
            raise RuntimeError("no labels to write into: give the annotator a LabelVolume (annotator.labels)")
        if self.labels.shape != self.spatial_shape:
            raise ValueError(
                f"the labels have shape {self.labels.shape}, the image {self.spatial_shape}: "
                "pick labels of the image's shape"
            )
        return self.labels

    def _write_mask(self, labels: LabelVolume, key: SliceKey, mask: np.ndarray, label: int, *, overwrite: bool,
                    keep: int | None = None) -> int:
        """Write ``label`` where ``mask`` is set (only on 0, or on ``keep``, unless ``overwrite``),
        reading and writing only the mask's bounding box."""
        box = mask_box(mask)
        if box is None:
            return 0
        y0, x0, y1, x1 = box
        o = self.orientation
        return labels.paint(o.region(key, box), o.to_region(mask[y0:y1, x0:x1]), label, overwrite=overwrite,
                            keep=keep)

    def commit(self, preview: Preview | None = None, *, overwrite: bool = False) -> list[int]:
        """Write the preview's objects into the labels as new ids (one undo step) and record
        the slices as that id's seeds; returns the ids written. A points-only object is one id
        on every slice; every box is its own. Without ``overwrite`` only 0 pixels are written:
        labels already there are never replaced."""
        preview = self.preview if preview is None else preview
        labels = self._labels()
        written: list[int] = []
        with labels.transaction():
            fresh = labels.next_id()
            point_id: int | None = None
            for key, objects in sorted(preview.items()):
                for obj in objects:
                    if obj.points_only and point_id is not None:
                        label = point_id
                    else:
                        label, fresh = fresh, fresh + 1
                        if obj.points_only:
                            point_id = label
                    if self._write_mask(labels, key, obj.mask, label, overwrite=overwrite):
                        labels.add_seed(label, self.orientation.seed_plane(key))
                        if label not in written:
                            written.append(label)
        self.clear()
        memory.trim_if_grown()
        return written

    def correct(self, label: int, preview: Preview | None = None, *, overwrite: bool = False) -> list[SliceKey]:
        """Replace object ``label`` on each previewed slice by the union of that slice's masks
        (one undo step; other labels kept unless ``overwrite``); the slices become its seeds.
        Returns the slices written."""
        if label <= 0:
            raise ValueError("pick a label id above 0 (the labels layer's selected label) to correct an object")
        preview = self.preview if preview is None else preview
        labels = self._labels()
        done = []
        with labels.transaction():
            for key, objects in sorted(preview.items()):
                union = np.logical_or.reduce([o.mask for o in objects])
                self._erase(labels, key, label)
                self._write_mask(labels, key, union, label, overwrite=overwrite)
                labels.add_seed(label, self.orientation.seed_plane(key))
                done.append(key)
        self.clear()
        return done

    def _plane_extent(self, labels: LabelVolume, label: int) -> tuple[int, int, int, int] | None:
        """``(y0, x0, y1, x1)`` on the plane axes that holds ``label`` (from its extent)."""
        ext = labels.extent(label)
        if ext is None:
            return None
        r, c = (ext[a] for a in self.orientation.plane_axes)
        return r.start, c.start, r.stop, c.stop

    def _erase(self, labels: LabelVolume, key: SliceKey, label: int) -> int:
        """Clear ``label`` on slice ``key``, reading only the box of its extent on that plane."""
        box = self._plane_extent(labels, label)
        if box is None:
            return 0
        return labels.erase(self.orientation.region(key, box), label)

    def undo(self) -> bool:
        return self._labels().undo()

    def redo(self) -> bool:
        return self._labels().redo()

    # ------------------------------------------------------------------ propagation

    def labels_on(self, key: SliceKey) -> list[int]:
        """The label ids on slice ``key`` (one plane read)."""
        plane = self._labels().read(self.orientation.plane_index(key))
        return [int(i) for i in np.unique(plane) if i != 0]

    def _axis_range(self, labels: LabelVolume, label: int) -> range:
        """Slices along the last slicing axis where ``label`` may be (from its extent)."""
        axis = self.orientation.lead_axes[-1]
        ext = labels.extent(label)
        if ext is None:
            return range(0)
        return range(ext[axis].start, ext[axis].stop)

    def propagation_seeds(self, here: SliceKey, ids: list[int] | None = None) -> dict[int, dict[int, np.ndarray]]:
        """``{label: {slice along the last slicing axis: H x W mask}}`` for the objects ``ids``
        (default: those on slice ``here``) in the stack through ``here``: the slices the user
        committed (or corrected) as each one's seeds, else every slice it is on (read within
        its extent only)."""
        if not self.lead_shape:
            raise ValueError("propagation needs a stack: this image has no slicing axis")
        labels = self._labels()
        here = tuple(here)
        ids = self.labels_on(here) if ids is None else [int(i) for i in ids]
        seeds: dict[int, dict[int, np.ndarray]] = {}
        for label in ids:
            for z in self._seed_candidates(labels, here, label):
                mask = self._seed_mask(labels, here, label, z)
                if mask is not None:
                    seeds.setdefault(label, {})[z] = mask
        return seeds

    def _seed_candidates(self, labels: LabelVolume, here: SliceKey, label: int) -> list[int]:
        """Slices (along the last slicing axis, through ``here``) that may seed ``label``: those
        the user committed it on, else every slice of its extent (unread: it may be absent)."""
        keys = [self.orientation.key_of(p) for p in labels.seeds.get(label, ())]
        slices = sorted({k[-1] for k in keys if k is not None and k[:-1] == tuple(here)[:-1]})
        return slices or list(self._axis_range(labels, label))

    def _seed_mask(self, labels: LabelVolume, here: SliceKey, label: int, z: int) -> np.ndarray | None:
        mask = labels.read(self.orientation.plane_index((*tuple(here)[:-1], z))) == label
        return mask if mask.any() else None

    def fill_seeds(self, here: SliceKey, label: int) -> tuple[dict[int, dict[int, np.ndarray]], tuple[int, int]]:
        """The seeds of a fill between annotated slices of ``label`` (``{label: {slice: mask}}``)
        and the range it fills, ``(lo, hi)`` (exclusive): the nearest seed slices below and above
        ``here`` along the last slicing axis, or, on a seed slice, the nearest on either side of
        it (both gaps). ``ValueError`` says what is missing."""
        labels = self._labels()
        label, z = int(label), tuple(here)[-1]
        candidates = self._seed_candidates(labels, here, label)
        found: dict[int, np.ndarray] = {}

        def nearest(slices) -> int | None:  # planes are read nearest first, only until one holds it
            for s in slices:
                mask = self._seed_mask(labels, here, label, s)
                if mask is not None:
                    found[s] = mask
                    return s
            return None

        on_here = z in candidates and nearest([z]) is not None
        lo = nearest(s for s in reversed(candidates) if s < z)
        hi = nearest(s for s in candidates if s > z)
        if on_here:  # on an annotated slice: the gaps on both sides of it
            lo, hi = z if lo is None else lo, z if hi is None else hi
        elif lo is None or hi is None:
            lo = hi = z
        if hi - lo < 2:
            raise ValueError(f"label {label} needs annotated slices around slice {z} with a slice between them to "
                             f"fill (its annotated slices: {candidates or 'none'}): commit it before and after")
        return {label: found}, (lo, hi)

    def iter_propagate(self, here: SliceKey, seeds: dict[int, dict[int, np.ndarray]], settings: Any = None, *,
                       outward: bool = True, stops: dict[int, list[tuple[float, float]]] | None = None):
        """``propagation.iter_propagate`` along the last slicing axis through ``here``,
        ``in_front`` of the encoding queue (``outward`` off: only between the seeds; ``stops``:
        ``{slice: [(x, y)]}`` where objects end)."""
        from ..volumes.propagation import iter_propagate

        axis = len(self.lead_shape) - 1
        return self.in_front(iter_propagate(self.session, seeds, axis=axis, base_key=tuple(here), settings=settings,
                                            outward=outward, stops=stops))

    def apply_propagation(
        self,
        here: SliceKey,
        found: dict[int, dict[int, ObjectMask]],
        seeds: dict[int, dict[int, np.ndarray]],
        *,
        overwrite: bool = False,
        within: tuple[int, int] | None = None,
    ) -> int:
        """Write a propagation (``{slice: {label: ObjectMask}}``) as one undo step: each seeded
        object's pixels off its seed slices are cleared first (re-propagating after a correction
        replaces the old propagation; with ``within=(lo, hi)``, a fill, only on the slices
        strictly between), then the new masks, higher score first; without ``overwrite`` only
        0 pixels or the object's own. Returns the pixels changed."""
        labels = self._labels()
        prefix = tuple(here)[:-1]
        changed = 0
        with labels.transaction():
            for label, planes in seeds.items():
                for z in self._axis_range(labels, label):
                    if within is not None and not within[0] < z < within[1]:
                        continue
                    if z not in planes:
                        changed += self._erase(labels, (*prefix, z), label)
            for z, objects in sorted(found.items()):
                # plane masks (16 MB each at 4096 x 4096): the pixels taken by higher scores are
                # tracked only where a slice has more than one object
                claimed = np.zeros(self.plane_shape, bool) if len(objects) > 1 else None
                for label, res in sorted(objects.items(), key=lambda kv: -kv[1].score):
                    mask = res.mask  # a packed mask unpacks on each access: once here
                    free = mask if claimed is None else np.greater(mask, claimed)  # mask and not claimed
                    changed += self._write_mask(labels, (*prefix, z), free, label, overwrite=overwrite, keep=label)
                    if claimed is not None:
                        claimed |= mask
        return changed

    # ------------------------------------------------------------------ segment everything

    def add_objects(self, key: SliceKey | None, objects: np.ndarray, *, overwrite: bool = False) -> list[int]:
        """Add the objects of a label image as new ids after the counter (one undo step):
        ``objects`` is ``H x W`` for slice ``key``, or, with ``key=None``, ``N x H x W`` for every
        slice along the first slicing axis (other slicing axes at 0). Returns the new ids."""
        labels = self._labels()
        objects = np.asarray(objects)
        if key is None:
            planes = {(i, *([0] * (len(self.lead_shape) - 1))): p for i, p in enumerate(objects)}
        else:
            planes = {tuple(key): objects}
        for p in planes.values():
            if p.shape != self.plane_shape:
                raise ValueError(f"objects of shape {p.shape} do not fit planes of {self.plane_shape}")
        offset = labels.next_id() - 1
        new: set[int] = set()
        o = self.orientation
        with labels.transaction():
            for k, plane in planes.items():
                box = mask_box(plane > 0)
                if box is None:
                    continue
                region = o.region(k, box)
                part = plane[box[0] : box[2], box[1] : box[3]].astype(np.int64)
                todo = part > 0
                if not overwrite:
                    todo &= np.squeeze(labels.read(region), axis=o.lead_axes) == 0
                values = np.where(todo, part + offset, 0)
                if labels.write_region(region, o.to_region(values), o.to_region(todo)):
                    new.update(np.unique(values[todo]).tolist())
        return sorted(int(i) for i in new)


    # ------------------------------------------------------------------ adapt and refine

    def iter_training_images(self, source: Any, keys: list[SliceKey] | None = None, *, name: str = ""):
        """``training.iter_training_images`` of the label image ``source`` (data frame, the
        image's spatial shape) in the current orientation."""
        from ..adaptation.training import iter_training_images

        return iter_training_images(self.session, self._oriented_labels(source), keys, name=name)

    def iter_head_samples(self, source: Any, keys: list[SliceKey] | None = None, *, name: str = ""):
        """``head_training.iter_head_samples`` of the label image ``source`` (data frame) in the
        current orientation: training images for the instance head."""
        from ..automatic.head_training import iter_head_samples

        return iter_head_samples(self.session, self._oriented_labels(source), keys, name=name)

    def iter_refine(self, source: Any, keys: list[SliceKey] | None = None, settings: Any = None):
        """``refine.iter_refine`` of the label image ``source`` (data frame) in the current
        orientation; write the result with ``apply_refine``."""
        from ..adaptation.refine import iter_refine

        return iter_refine(self.session, self._oriented_labels(source), keys, settings)

    def _oriented_labels(self, source: Any) -> Any:
        shape = tuple(int(s) for s in source.shape)
        if shape != self.spatial_shape:
            raise ValueError(f"labels of shape {shape} do not fit the image's {self.spatial_shape}: "
                             "pick the labels of this image")
        return self.orientation.view(source)

    def apply_refine(self, result: Any, labels: LabelVolume | None = None) -> int:
        """Write a ``RefineResult`` (made in the current orientation) into ``labels`` (default:
        the annotator's) as one undo step; returns the pixels changed."""
        labels = labels if labels is not None else self._labels()
        o = self.orientation
        changed = 0
        with labels.transaction():
            for plane in result.planes:
                values = plane.values()
                changed += labels.write_region(o.region(plane.key, plane.box), o.to_region(values),
                                               o.to_region(np.ones(values.shape, bool)))
        return changed

"""Labels from prompts or automatically, for one file or many, serially or on dask.

``labels_from_prompts`` is the scripted twin of the widget's Commit: every object gets its
own id (an object of points only keeps one id on every slice it has points on), and an
object never overwrites pixels that an earlier one took.

``run_batch`` runs ``process_file`` for every file as a task on ``dask.distributed``: a
``LocalCluster`` by default, or an existing scheduler. Each worker process loads a model
once and keeps it (on the worker object) for the files it gets. A file whose outputs exist
is skipped (resume); a file that fails is reported in the summary and the rest go on.
Outputs are written atomically (``io.atomic_write``).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import InputError, prompts_by_slice, read_boxes_csv, read_image, read_points_csv, write_labels, write_table


@dataclass(frozen=True)
class FileJob:
    """What to do with every file of a batch (picklable: it travels to dask workers)."""

    model: str
    out_dir: str
    device: str = "cpu"
    prompts_dir: str | None = None
    auto: Any = None  # AutoSettings: segment everything instead of prompts
    store: str | None = None  # embedding store folder; None: the cache folder; "none": RAM
    tile_size: int = 1024
    overlap: int = 256
    channel_axis: int | None = None
    channel: int | None = None
    threads: int | None = None  # torch threads per worker
    mode: str | None = None  # segment everything: ais, apg or amg (default: ais with a head, else amg)
    head: str | None = None  # an instance head file (napari-sam-hq train --head instances)


def labels_from_prompts(session, objects_by_slice: dict[tuple[int, ...], list[dict]], *,
                        multimask_output: bool = False, hq_token_only: bool = False) -> np.ndarray:
    """``(*lead, H, W)`` uint32 labels for the objects of ``prompts_by_slice`` (module rule)."""
    labels = np.zeros((*session.lead_shape, *session.plane_shape), np.uint32)
    next_id = 1
    points_id: int | None = None
    for key in sorted(objects_by_slice):
        objects = objects_by_slice[key]
        results = session.segment(key, objects, multimask_output=multimask_output, hq_token_only=hq_token_only)
        plane = labels[key] if key else labels
        for obj, res in zip(objects, results, strict=True):
            if "box" not in obj:
                if points_id is None:
                    points_id, next_id = next_id, next_id + 1
                label = points_id
            else:
                label, next_id = next_id, next_id + 1
            plane[res.mask & (plane == 0)] = label
    return labels


def open_store(store: str | None):
    from ..volumes.store import EmbeddingStore, default_store_root

    if store is not None and store.lower() == "none":
        return EmbeddingStore(None)
    return EmbeddingStore(store or default_store_root())


def prompt_files(image_path: Path, prompts_dir: str | Path) -> tuple[Path | None, Path | None]:
    """``<stem>.points.csv`` and ``<stem>.boxes.csv`` in ``prompts_dir`` (either may be missing)."""
    d = Path(prompts_dir)
    stem = image_path.name.split(".")[0]
    pts, boxes = d / f"{stem}.points.csv", d / f"{stem}.boxes.csv"
    return (pts if pts.is_file() else None), (boxes if boxes.is_file() else None)


def output_paths(image_path: Path, out_dir: str | Path) -> tuple[Path, Path]:
    stem = image_path.name.split(".")[0]
    return Path(out_dir) / f"{stem}_labels.tif", Path(out_dir) / f"{stem}_measurements.csv"


def segment_image(model, image, job: FileJob, *, progress: Callable[[float, str], None] | None = None):
    """Labels for a ``LoadedImage`` by ``job``'s rule (prompts or automatic)."""
    from ...model.common import exhaust
    from ..automatic.modes import iter_segment_everything
    from ..volumes.session import SegmentationSession

    session = SegmentationSession(model, image.data, rgb=image.rgb, store=open_store(job.store),
                                  tile_size=job.tile_size, overlap=job.overlap)
    if job.auto is not None:
        head = _head_for(job, model)
        gen = iter_segment_everything(session, None, job.auto, mode=job.mode, head=head)
        if progress is None:
            return exhaust(gen)
        try:
            while True:
                progress(*next(gen))
        except StopIteration as stop:
            return stop.value
    if job.prompts_dir is None:
        raise InputError("give prompts (a prompts folder) or ask for automatic segmentation")
    pts_file, box_file = prompt_files(image.path, job.prompts_dir)
    if pts_file is None and box_file is None:
        raise InputError(
            f"no prompts for {image.path.name} in {job.prompts_dir} (expected "
            f"{image.path.name.split('.')[0]}.points.csv and/or .boxes.csv)"
        )
    ndim = len(image.lead_shape) + 2
    points = read_points_csv(pts_file, ndim) if pts_file else None
    boxes = read_boxes_csv(box_file, ndim) if box_file else None
    objects = prompts_by_slice(image, points, boxes, source=str(pts_file or box_file))
    return labels_from_prompts(session, objects)


def _head_for(job: FileJob, model):
    """The job's instance head (checked against the model), or ``None``."""
    if job.head is None:
        return None
    from ..automatic.instances import load_head

    return load_head(job.head, model=model)[0]


def _model_for(job: FileJob, cache: dict):
    key = (job.model, job.device)
    if key not in cache:
        import torch

        from ...model import load_model

        if job.threads:
            torch.set_num_threads(job.threads)
        cache[key] = load_model(job.model, device=job.device)
    return cache[key]


def _worker_cache() -> dict:
    """The model cache of this dask worker (an attribute of the worker), or of this process."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return _PROCESS_CACHE
    if not hasattr(worker, "_napari_sam_hq_models"):
        worker._napari_sam_hq_models = {}
    return worker._napari_sam_hq_models


_PROCESS_CACHE: dict = {}  # serial runs: one model per (name, device) for the whole batch


def process_file(path: str, job: FileJob) -> dict:
    """Segment and measure one file; returns its summary row (never raises)."""
    from .measure import measure

    image_path = Path(path)
    labels_out, table_out = output_paths(image_path, job.out_dir)
    row = {"file": str(image_path), "status": "", "objects": 0, "labels": str(labels_out),
           "measurements": str(table_out), "seconds": 0.0, "error": ""}
    if labels_out.is_file() and table_out.is_file():
        row["status"] = "skipped"  # finished in an earlier run
        return row
    t0 = time.perf_counter()
    try:
        image = read_image(image_path, channel_axis=job.channel_axis, channel=job.channel)
        model = _model_for(job, _worker_cache())
        labels = segment_image(model, image, job)
        intensity = None if image.rgb else image.data
        table = measure(labels, intensity) if labels.ndim in (2, 3) else None
        write_labels(labels_out, labels)
        if table is not None:
            write_table(table_out, table)
        row.update(status="done", objects=int(len(np.unique(labels)) - 1))
    except Exception as err:  # one bad file must not stop the batch: report it
        row.update(status="error", error=f"{type(err).__name__}: {err}".splitlines()[0])
        if os.environ.get("NAPARI_SAM_HQ_DEBUG"):
            row["error"] += "\n" + traceback.format_exc()
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def run_batch(files: Iterable[str | Path], job: FileJob, *, scheduler: str | None = "local", workers: int = 2,
              progress: Callable[[dict], None] | None = None):
    """Process ``files``; returns the summary table (also written to ``out_dir/summary.csv``).

    ``scheduler``: ``"local"`` (a ``LocalCluster`` of ``workers`` processes), the address of
    a running ``dask.distributed`` scheduler, or ``None``/``"serial"`` (this process).
    """
    import pandas as pd

    files = [str(f) for f in files]
    rows: list[dict] = []
    if scheduler in (None, "serial"):
        for f in files:
            rows.append(process_file(f, job))
            if progress:
                progress(rows[-1])
    else:
        from distributed import Client, LocalCluster, as_completed

        if scheduler == "local":
            threads = max(1, (os.cpu_count() or 1) // workers)
            job = FileJob(**{**job.__dict__, "threads": job.threads or threads})
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, host="127.0.0.1")
            client = Client(cluster)
        else:
            cluster, client = None, Client(scheduler)
        try:
            futures = [client.submit(process_file, f, job, pure=False) for f in files]
            for fut in as_completed(futures):
                rows.append(fut.result())
                if progress:
                    progress(rows[-1])
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    order = {f: i for i, f in enumerate(files)}
    table = pd.DataFrame(sorted(rows, key=lambda r: order[r["file"]]),
                         columns=["file", "status", "objects", "labels", "measurements", "seconds", "error"])
    write_table(Path(job.out_dir) / "summary.csv", table)
    return table

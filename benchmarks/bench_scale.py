"""napari at scale: a scripted session in a shown napari window (run under Xvfb), vit_tiny.

    xvfb-run -a python benchmarks/bench_scale.py                  # both volumes
    xvfb-run -a python benchmarks/bench_scale.py --only stack     # 300 x 2048 x 2048 only

Each part runs in a fresh process (its own peak RSS, VmHWM), on a seeded random vit_tiny
checkpoint in the official format and a fresh store:

- reference: one 1024 x 1024 ``set_image`` (the engine, no viewer), and prompt -> preview
  on a 2D 1024 x 1024 image in the widget (median of 20 prompts);
- stack: a 300 x 2048 x 2048 uint16 dask stack generated lazily (never dense): load the
  model, a point on slice 150 -> the first object on screen; the rest of the plane encoded;
  20 prompts (prompt -> preview on screen, and -> settled: a mask cut at a tile edge is
  drawn first, then redone from the tile that holds it); 5 commits (labels on disk: 5 GB dense); propagate one
  object over 50 slices; undo;
- volume: 1000 x 4096 x 4096 uint16 (generated lazily; 67 GB dense labels): objects on
  three distant slices, propagate one over 20 slices, then a new viewer reopens the image
  and its saved labels; labels on disk vs the chunks touched.

Random weights give noisy masks (often a whole tile), so commits and propagation here
write more pixels than pretrained weights would. Not a test: nothing asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


from bench_volume import _peak_mb  # noqa: E402 - after the path set-up


def lazy_volume(shape: tuple[int, ...], chunk: int = 1024, seed: int = 0):
    """A uint16 dask volume of bright discs on noise, every chunk computed on demand."""
    import dask.array as da

    def block(block_info=None):
        info = block_info[None]
        (z0, _), (y0, y1), (x0, x1) = info["array-location"]
        rng = np.random.default_rng([seed, z0, y0, x0])
        h, w = y1 - y0, x1 - x0
        out = rng.normal(400, 40, (1, h, w)).astype(np.float32)
        yy, xx = np.ogrid[:h, :w]
        for _ in range(12):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 60)
            out[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 1800
        return out.clip(0, 65535).astype(np.uint16)

    chunks = (1, min(chunk, shape[1]), min(chunk, shape[2]))
    return da.map_blocks(block, dtype=np.uint16, chunks=tuple(
        tuple([c] * (s // c) + ([s % c] if s % c else [])) for s, c in zip(shape, chunks, strict=True)
    ))


class Session:
    """A shown viewer with the docked widget, driven through public names only."""

    def __init__(self, ckpt: str, tmp: Path, *, show: bool = True) -> None:
        import napari
        from qtpy.QtWidgets import QApplication

        self.viewer = napari.Viewer(show=show)
        cache_gb = os.environ.get("BENCH_NAPARI_DASK_CACHE_GB")
        if cache_gb is not None:  # napari's preference (Application > Dask cache), this process only
            from napari.utils import resize_dask_cache

            resize_dask_cache(int(float(cache_gb) * 1e9))
        self.app = QApplication.instance()
        self.tmp = tmp
        self.ckpt = ckpt
        self.first_preview: list[float] = []

    def dock(self):
        _, widget = self.viewer.window.add_plugin_dock_widget("napari-sam-hq", "SAM-HQ")
        widget.settings.model_combo.setCurrentText(self.ckpt)
        widget.settings.device_combo.setCurrentText("cpu")
        widget.settings.store_edit.setText(str(self.tmp / "store.zarr"))
        widget.settings.store_edit.editingFinished.emit()
        self.widget = widget
        return widget

    def until(self, cond, timeout: float = 600.0) -> float:
        t = time.perf_counter()
        while not cond():
            self.app.processEvents()
            time.sleep(0.001)
            if time.perf_counter() - t > timeout:
                raise TimeoutError("benchmark step did not finish")
        return time.perf_counter() - t

    def prompt(self, point) -> float:
        """Add a point; seconds until its decode is done and the preview drawn (settled).
        ``self.first_preview`` gets the seconds until the preview layer first took new data:
        on a tiled plane a mask cut at a tile edge is drawn then, and redone after."""
        from napari_sam_hq._napari import constants as C

        w = self.widget
        w.clear_prompts()
        w.wait()
        preview = self.viewer.layers[C.PREVIEW_LAYER]
        first: list[float] = []

        def drawn(_event) -> None:
            if preview.data.size > 1 and not first:
                first.append(time.perf_counter() - t)

        preview.events.data.connect(drawn)
        t = time.perf_counter()
        self.viewer.layers[C.POINTS_LAYER].add(point)
        w.wait()
        settled = time.perf_counter() - t
        preview.events.data.disconnect(drawn)
        self.first_preview.append(first[0] if first else settled)
        return settled


def part_reference(ckpt: str, tmp: Path) -> dict:
    from napari_sam_hq.engine import SamHQPredictor
    from napari_sam_hq.model import load_model
    from tests.conftest import blob_image

    image = blob_image(1024, 1024, seed=0, channels=1).astype(np.uint16) * 16
    predictor = SamHQPredictor(load_model(ckpt, device="cpu"))
    predictor.set_image(image)  # warm up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        predictor.set_image(image)
        times.append(time.perf_counter() - t)
    s = Session(ckpt, tmp)
    s.viewer.add_image(image, name="image")
    w = s.dock()
    w.compute_embeddings()
    w.wait()
    rng = np.random.default_rng(0)
    s.prompt(rng.uniform(100, 900, 2))
    s.first_preview.clear()
    prompts = [s.prompt(rng.uniform(100, 900, 2)) for _ in range(20)]
    return {"set_image_1024_s": statistics.median(times), "prompt_2d_ms": 1000 * statistics.median(prompts),
            "prompt_2d_first_ms": 1000 * statistics.median(s.first_preview)}


def _labels_disk(path: Path) -> tuple[float, int]:
    files = [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20, len(files)


def part_stack(ckpt: str, tmp: Path) -> dict:
    from napari_sam_hq._napari import constants as C
    from napari_sam_hq.engine.annotation.annotator import PreviewObject

    out: dict = {}
    data = lazy_volume((300, 2048, 2048))
    s = Session(ckpt, tmp)
    layer = s.viewer.add_image(data, name="stack", contrast_limits=(0, 4000))
    w = s.dock()
    s.viewer.dims.set_current_step(0, 150)
    t = time.perf_counter()
    w.compute_embeddings(keys=[])  # the model only
    w.wait()
    out["model_load_s"] = time.perf_counter() - t
    ann = w.annotator(layer)
    points = s.viewer.layers[C.POINTS_LAYER]
    t = time.perf_counter()
    points.add([150, 700, 900])
    out["first_object_s"] = s.until(lambda: bool(ann.preview)) + 0
    w.wait()
    out["first_object_settled_s"] = time.perf_counter() - t
    out["peak_mb_after_first_object"] = _peak_mb()
    [first_id] = w.commit()  # the object propagated below
    # the rest of the plane (and its coarse pass), as it would be while the user looks around
    ann.request([(150,)], tiles=[ann.session.grid.coarse])
    w.compute_embeddings(keys=[(150,)])
    w.wait()
    rng = np.random.default_rng(1)
    s.first_preview.clear()
    out["prompt_settled_ms"] = 1000 * statistics.median(
        [s.prompt([150, *rng.uniform(200, 1800, 2)]) for _ in range(20)]
    )
    out["prompt_ms"] = 1000 * statistics.median(s.first_preview)  # prompt -> preview on screen
    commits, cell_commits = [], []
    for i in range(5):
        s.prompt([150, 300 + 300 * i, 400 + 250 * i])
        t = time.perf_counter()
        ids = w.commit()
        commits.append(time.perf_counter() - t)
        # random weights answer with whole tiles: a later one may land on pixels already taken
        out["commits_that_wrote_nothing"] = out.get("commits_that_wrote_nothing", 0) + (not ids)
    out["peak_mb_after_prompts_and_commits"] = _peak_mb()
    out["commit_ms"] = 1000 * statistics.median(commits)
    out["commit_max_ms"] = 1000 * max(commits)
    # random weights answer with masks of a whole tile; a cell is ~80 px across
    yy, xx = np.ogrid[:2048, :2048]
    for i in range(5):
        cell = (yy - 1500 - 60 * i) ** 2 + (xx - 300 - 90 * i) ** 2 <= 40**2
        ann.preview = {(150,): [PreviewObject(cell, 0.9, False)]}
        t = time.perf_counter()
        assert w.commit()
        cell_commits.append(time.perf_counter() - t)
    out["commit_cell_ms"] = 1000 * statistics.median(cell_commits)
    labels = s.viewer.layers[C.LABELS_LAYER]
    out["labels_on_disk"] = type(labels.data).__module__.startswith("zarr")
    labels.selected_label = first_id
    out["propagate_50_s"] = _propagate(w, 25, out)
    reached = [z for z in range(125, 176) if z != 150 and (np.asarray(labels.data[z]) == first_id).any()]
    out["propagated_slices"] = len(reached)
    t = time.perf_counter()
    w.undo()
    out["undo_ms"] = 1000 * (time.perf_counter() - t)
    out["labels_mb"], out["labels_files"] = _labels_disk(w.labels_path())
    out["napari_dask_cache_mb"] = _napari_dask_cache_mb()
    s.viewer.close()
    return out


def _propagate(w, each_way: int, out: dict) -> float:
    """Propagate the selected label ``each_way`` slices up and down (random weights: no
    stopping rule would be meaningful, so the thresholds are off); returns the seconds."""
    w.propagation.selected_only_check.setChecked(True)
    form = w.propagation.propagation_form
    form.score_threshold.value, form.iou_threshold.value, form.min_area.value = 0.0, 0.0, 1
    form.max_slices.value = each_way
    t = time.perf_counter()
    w.propagate()
    w.wait()
    seconds = time.perf_counter() - t
    out["propagate_status"] = w.status_label.text()
    out["peak_mb_after_propagation"] = _peak_mb()
    return seconds


def part_volume(ckpt: str, tmp: Path) -> dict:
    from napari_sam_hq._napari import constants as C

    out: dict = {}
    data = lazy_volume((1000, 4096, 4096))
    s = Session(ckpt, tmp)
    layer = s.viewer.add_image(data, name="volume", contrast_limits=(0, 4000))
    w = s.dock()
    w.compute_embeddings(keys=[])
    w.wait()
    ids = []
    t = time.perf_counter()
    for z in (100, 500, 900):
        s.viewer.dims.set_current_step(0, z)
        s.prompt([z, 2000, 2100])
        ids += w.commit()
    out["three_objects_s"] = time.perf_counter() - t
    labels = s.viewer.layers[C.LABELS_LAYER]
    out["labels_on_disk"] = type(labels.data).__module__.startswith("zarr")
    labels.selected_label = ids[1]
    s.viewer.dims.set_current_step(0, 500)
    out["propagate_20_s"] = _propagate(w, 10, out)
    path = w.labels_path(layer)
    out["labels_mb"], out["labels_files"] = _labels_disk(path)
    # digests, not copies: five 4096 x 4096 uint32 planes are 320 MB that the session does
    # not hold, and a copy kept here would count in its peak RSS
    before = {z: _digest(labels.data[z]) for z in (100, 495, 500, 505, 900)}
    out["peak_mb_before_reopen"] = _peak_mb()
    # save = every write is on disk already; reopen = the image opened again in this napari
    # (its layers removed first), which offers the saved labels
    for name in (C.LABELS_LAYER, "volume"):
        s.viewer.layers.remove(name)
    t = time.perf_counter()
    s.viewer.add_image(data, name="volume", contrast_limits=(0, 4000))
    reopened = s.viewer.layers[C.LABELS_LAYER]
    out["reopen_s"] = time.perf_counter() - t
    out["reopen_equal"] = all(_digest(reopened.data[z]) == v for z, v in before.items())
    out["next_id_after_reopen"] = w.labels_volume(reopened).next_id()
    out["napari_dask_cache_mb"] = _napari_dask_cache_mb()
    s.viewer.close()
    return out


def _digest(plane) -> tuple:
    """Shape, dtype and SHA-256 of one plane's values (read one plane at a time)."""
    import hashlib

    a = np.ascontiguousarray(np.asarray(plane))
    return a.shape, a.dtype.str, hashlib.sha256(memoryview(a).cast("B")).hexdigest()


def _napari_dask_cache_mb() -> float:
    """What napari's opportunistic dask cache holds (chunks of the slices it showed; its size
    is a napari preference, 25% of RAM by default): part of the session's RSS, not ours."""
    from napari.utils import _dask_utils

    return _dask_utils._DASK_CACHE.cache.total_bytes / 2**20


PARTS = {"reference": part_reference, "stack": part_stack, "volume": part_volume}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=list(PARTS), nargs="*", default=None)
    parser.add_argument("--napari-dask-cache-gb", type=float, default=None,
                        help="napari's dask cache size (its preference; default: napari's own, 25%% of RAM)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        part, ckpt, tmp = args.worker
        out = PARTS[part](ckpt, Path(tmp))
        out["peak_rss_mb"] = _peak_mb()
        print("RESULT " + json.dumps(out))
        return

    from bench_model import _make_checkpoints

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pth, _ = _make_checkpoints(Path(tmp), "vit_tiny")
        for part in dict.fromkeys(["reference", *(args.only or ["stack", "volume"])]):  # once each, in order
            folder = Path(tmp) / part
            folder.mkdir()
            env = dict(os.environ, NAPARI_SAM_HQ_CACHE=str(folder / "cache"))
            if args.napari_dask_cache_gb is not None:
                env["BENCH_NAPARI_DASK_CACHE_GB"] = str(args.napari_dask_cache_gb)
            proc = subprocess.run([sys.executable, __file__, "--worker", part, pth, str(folder)],
                                  capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{part} failed (exit code {proc.returncode}):\n{proc.stderr[-3000:]}")
                continue
            results[part] = json.loads(lines[-1][7:])
            print(part, json.dumps(results[part], indent=1))
    ref = results.get("reference")
    if ref and "stack" in results:
        st = results["stack"]
        first, tile = st["first_object_s"], ref["set_image_1024_s"]
        print(
            f"\nstack: first object {first:.2f} s = {first / tile:.2f}x one 1024 set_image ({tile:.2f} s); "
            f"prompt -> preview {st['prompt_ms']:.0f} ms = {st['prompt_ms'] / ref['prompt_2d_first_ms']:.2f}x the 2D "
            f"1024 ({ref['prompt_2d_first_ms']:.0f} ms); settled (a cut mask redone) {st['prompt_settled_ms']:.0f} ms "
            f"= {st['prompt_settled_ms'] / ref['prompt_2d_ms']:.2f}x ({ref['prompt_2d_ms']:.0f} ms); "
            f"commit median {st['commit_ms']:.0f} ms "
            f"(a cell-sized object: {st['commit_cell_ms']:.0f} ms); "
            f"peak RSS {st['peak_rss_mb']:.0f} MB (napari's dask cache at the end: {st['napari_dask_cache_mb']:.0f} MB)"
        )
    if "volume" in results:
        vo = results["volume"]
        print(f"volume: peak RSS {vo['peak_rss_mb']:.0f} MB; labels on disk {vo['labels_mb']:.1f} MB "
              f"in {vo['labels_files']} files; reopened equal: {vo['reopen_equal']}; "
              f"napari's dask cache at the end: {vo['napari_dask_cache_mb']:.0f} MB")


if __name__ == "__main__":
    main()

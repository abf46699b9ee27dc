"""A 300 x 2048 x 2048 volume (lazy) is annotated with labels on disk in bounded RAM.

Runs in a fresh process so its peak RSS (VmHWM) is its own. Dense labels of this volume
would take 5 GB (uint32) and a whole-volume preview 2.5 GB; the annotator reads and
writes one plane's boxes at a time, so commits on distant slices, a propagation over 20
slices, undo and a reopen stay far below that. The rule model stands in for SAM-HQ
(memory, not quality, is the subject).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc (Linux)")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, dask.array as da
    sys.path.insert(0, sys.argv[2])
    from tests.engine.fake_predictor import FakeModel, FakePredictor
    from napari_sam_hq.engine.annotation.annotator import Annotator, SlicePrompts
    from napari_sam_hq.engine.annotation.labels import LabelVolume, open_labels_zarr
    from napari_sam_hq.engine.volumes.propagation import PropagationSettings
    from napari_sam_hq.engine.volumes.store import EmbeddingStore

    def peak_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    shape = (300, 2048, 2048)

    def block(block_info=None):
        (z0, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        out = np.full((1, y1 - y0, x1 - x0), 500, np.uint16)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        out[0][(yy - 1000) ** 2 + (xx - 1000) ** 2 <= 120 ** 2] = 3000   # a cylinder through the stack
        return out

    data = da.map_blocks(block, dtype=np.uint16, chunks=((1,) * 300, (1024, 1024), (1024, 1024)))
    base = peak_mb()
    labels = LabelVolume(open_labels_zarr(sys.argv[1], shape))
    ann = Annotator(data, model=FakeModel(), store=EmbeddingStore(None), labels=labels,
                    predictor_factory=FakePredictor)
    for z in (10, 150, 290):
        prompts = {(z,): SlicePrompts(points=[(1000.0, 1000.0)], labels=[1])}
        ann.decode(prompts)
        for _ in ann.iter_encode():
            pass
        ann.decode(prompts)
        assert ann.commit() == [labels.next_id() - 1]
    seeds = ann.propagation_seeds((150,), [2])
    gen = ann.iter_propagate((150,), seeds, PropagationSettings(max_slices=10))
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        found = stop.value
    ann.apply_propagation((150,), found, seeds)
    reached = sorted(z for z in range(300) if z in found)
    ann.undo()
    ann.redo()
    reopened = LabelVolume(open_labels_zarr(sys.argv[1], shape))
    print(json.dumps({"peak_mb": peak_mb(), "base_mb": base, "reached": reached, "scans": labels.scans,
                      "next_id": reopened.next_id(), "reopen_scans": reopened.scans,
                      "on_150": int((np.asarray(reopened.array[150]) == 2).sum())}))
    """
)


def test_a_300_slice_2048_volume_is_annotated_on_disk_in_bounded_ram(tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "labels.zarr"), root], capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert out["reached"] == [z for z in range(140, 161) if z != 150]
    assert out["scans"] == 0 and out["reopen_scans"] == 0 and out["next_id"] == 4
    assert out["on_150"] > 0.9 * 3.1416 * 120**2
    assert out["peak_mb"] - out["base_mb"] < 1024  # dense labels alone would be 5120 MB
    files = [f for f in (tmp_path / "labels.zarr").rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 20 * 2**20  # only the chunks touched

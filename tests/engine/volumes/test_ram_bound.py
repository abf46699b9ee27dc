"""A 300-slice 1024 x 1024 stack with vit_b is annotated within 4 GB of RAM.

Runs in a fresh process so its peak RSS (VmHWM) is its own. The store is filled with
synthetic vit_b-shaped embeddings under the real content keys of the slices (encoding
300 slices would take 40 minutes here, and the values do not change the memory); then
every slice is prompted through the session, loading its entry from disk and decoding
with a full-size random vit_b.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc (Linux)"),
]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from napari_sam_hq.engine import EmbeddingStore, ImageEmbedding, SegmentationSession
    from napari_sam_hq.model import build_sam_hq, prepare_for_inference

    def peak_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    torch.manual_seed(0)
    model = prepare_for_inference(build_sam_hq("vit_b"))
    n = 300
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, size=(n, 1024, 1024), dtype=np.uint8)
    store = EmbeddingStore(sys.argv[1])
    session = SegmentationSession(model, stack, store=store)
    base = rng.normal(size=(1, 256, 64, 64)).astype(np.float32)
    hq = rng.normal(size=(1, 32, 256, 256)).astype(np.float32)
    for z in range(n):
        [(tile, entry)] = session.entry_keys((z,))
        store.put(session.model_id, entry, ImageEmbedding(base + z, None, (1024, 1024), (1024, 1024),
                  model.name, model.checkpoint_id, hq_features=hq), slice_key=(z,), tile=tile.box)
    store.drop_memory()
    after_fill = peak_mb()
    for z in range(n):
        [obj] = session.segment((z,), [{"box": [100 + z, 200, 400 + z, 500]}])
        assert obj.mask.shape == (1024, 1024)
    print(json.dumps({"peak_mb": peak_mb(), "after_fill_mb": after_fill, "in_memory": store.in_memory,
                      "ready": len(session._ready), "max_ready": session._max_ready,
                      "max_in_memory": store.max_in_memory, "misses": store.misses}))
    """
)


def test_300_slices_of_vit_b_within_4_gb(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store.zarr")], capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert out["misses"] == 0  # every slice came from the store, none was encoded
    assert out["in_memory"] <= out["max_in_memory"] and out["ready"] <= out["max_ready"]
    assert out["peak_mb"] < 4096

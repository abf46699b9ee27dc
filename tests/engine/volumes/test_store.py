"""The embedding store: keys, invalidation, reuse across sessions, resume, corruption, RAM bound."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_hq.engine.prediction.predictor import ImageEmbedding
from napari_sam_hq.engine.volumes.session import SegmentationSession
from napari_sam_hq.engine.volumes.store import EmbeddingStore, StoreWarning, content_key

from ..fake_predictor import FakeModel, FakePredictor, ellipsoid_volume


def _embedding(seed: int = 0) -> ImageEmbedding:
    rng = np.random.default_rng(seed)
    return ImageEmbedding(
        image_embedding=rng.normal(size=(1, 256, 64, 64)).astype(np.float32),
        early_feature=None,
        original_size=(100, 80),
        input_size=(1024, 819),
        model_name="m",
        checkpoint_id="c",
        hq_features=rng.normal(size=(1, 32, 256, 256)).astype(np.float32),
    )


def _session(data, store, model=None, **kw) -> SegmentationSession:
    return SegmentationSession(model or FakeModel(), data, store=store, predictor_factory=FakePredictor, **kw)


def test_content_key_depends_on_pixels_limits_and_dtype():
    a = np.zeros((32, 32), np.uint16)
    b = a.copy()
    b[5, 7] = 1
    keys = {
        content_key(a, None),
        content_key(b, None),
        content_key(a, (0.0, 10.0)),
        content_key(a.astype(np.float32), None),
        content_key(a[:, :31], None),
    }
    assert len(keys) == 5
    assert content_key(a, None) == content_key(a.copy(), None)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip_on_disk_and_a_new_store_on_the_same_folder_reuses_it(tmp_path, dtype):
    emb = _embedding()
    store = EmbeddingStore(tmp_path / "s.zarr", dtype=dtype)
    stored = store.put("model", "k1", emb, slice_key=(3,), tile=(0, 0, 100, 80))
    assert stored.image_embedding.dtype == dtype and stored.early_feature is None
    again = EmbeddingStore(tmp_path / "s.zarr", dtype=dtype).get("model", "k1")
    assert again is not None
    np.testing.assert_array_equal(again.image_embedding, stored.image_embedding)
    np.testing.assert_array_equal(again.hq_features, stored.hq_features)
    assert again.original_size == (100, 80) and again.input_size == (1024, 819)
    assert EmbeddingStore(tmp_path / "s.zarr").get("other-model", "k1") is None
    tol = 1e-3 if dtype == np.float16 else 0
    np.testing.assert_allclose(again.hq_features, emb.hq_features, atol=tol * 4, rtol=tol)


def test_store_refuses_a_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not an embedding store"):
        EmbeddingStore(tmp_path / "photos")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        EmbeddingStore(tmp_path / "file")
    with pytest.raises(ValueError, match="float16 or float32"):
        EmbeddingStore(None, dtype=np.int8)


def test_ram_holds_at_most_max_in_memory_entries(tmp_path):
    store = EmbeddingStore(tmp_path / "s.zarr", max_in_memory=3)
    for i in range(6):
        store.put("m", f"k{i}", _embedding(i))
    assert store.in_memory == 3
    assert store.get("m", "k0") is not None  # evicted from RAM, still on disk
    assert store.in_memory == 3
    ram_only = EmbeddingStore(None, max_in_memory=2)
    for i in range(4):
        ram_only.put("m", f"k{i}", _embedding(i))
    assert ram_only.get("m", "k0") is None and ram_only.get("m", "k3") is not None


def test_one_changed_voxel_recomputes_exactly_that_slice(tmp_path):
    image, _ = ellipsoid_volume((6, 64, 64))
    model = FakeModel()
    store = EmbeddingStore(tmp_path / "s.zarr")
    session = _session(image, store, model)
    for _ in session.iter_embed():
        pass
    assert model.encodes == 6 and all(session.is_ready(k) for k in session.keys)
    image[4, 10, 10] ^= 1
    assert [k for k in session.keys if not session.is_ready(k)] == [(4,)]
    for _ in session.iter_embed():
        pass
    assert model.encodes == 7


def test_reopen_reuses_and_a_partial_store_resumes(tmp_path):
    image, _ = ellipsoid_volume((8, 64, 64), seed=3)
    model = FakeModel()
    gen = _session(image, EmbeddingStore(tmp_path / "s.zarr"), model).iter_embed()
    for fraction, key in gen:
        if key == (3,) and fraction >= 3.5 / 8:  # stopped in the middle of slice 3
            gen.close()
            break
    assert model.encodes == 3
    reopened = _session(image, EmbeddingStore(tmp_path / "s.zarr"), model)
    assert [reopened.is_ready(k) for k in reopened.keys] == [True] * 3 + [False] * 5
    for _ in reopened.iter_embed():
        pass
    assert model.encodes == 8
    third = _session(image, EmbeddingStore(tmp_path / "s.zarr"), model)
    for _ in third.iter_embed():
        pass
    assert model.encodes == 8  # everything came from disk
    assert not list((tmp_path / "s.zarr").rglob(".tmp-*"))


def test_corrupt_and_truncated_entries_are_recomputed_with_a_warning(tmp_path):
    image, truth = ellipsoid_volume((3, 96, 96), blobs=(((1, 48, 48), (2, 20, 20)),))
    model = FakeModel()
    root = tmp_path / "s.zarr"
    session = _session(image, EmbeddingStore(root), model)
    for _ in session.iter_embed():
        pass
    entries = {}
    for meta in root.glob("*/*/zarr.json"):
        entries[tuple(json.loads(meta.read_text())["attributes"]["slice"])] = meta.parent
    assert sorted(entries) == [(0,), (1,), (2,)]
    hq_chunk = entries[(1,)] / "hq_features" / "c" / "0" / "0" / "0" / "0"
    hq_chunk.write_bytes(hq_chunk.read_bytes()[:100])  # truncated
    emb_chunk = entries[(2,)] / "image_embedding" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(emb_chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: the zstd checksum catches it
    emb_chunk.write_bytes(bytes(raw))
    (entries[(0,)] / "hq_features" / "c" / "0" / "0" / "0" / "0").unlink()  # a lost chunk is not zeros
    fresh = _session(image, EmbeddingStore(root), model)
    with pytest.warns(StoreWarning, match="unreadable"):
        [obj] = fresh.segment((1,), [{"point_coords": [[48, 48]], "point_labels": [1]}])
    assert (obj.mask == (truth[1] == 1)).mean() > 0.99
    assert model.encodes == 4
    with pytest.warns(StoreWarning, match="unreadable"):
        for _ in fresh.iter_embed():
            pass
    assert model.encodes == 3 + 1 + 2
    clean = EmbeddingStore(root)
    assert all(clean.get(fresh.model_id, k) is not None for k in clean.entries(fresh.model_id))

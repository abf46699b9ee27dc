"""``LazyModel``: name and checkpoint id without loading, recorded per unchanged file."""

from __future__ import annotations

import os
import shutil

from napari_sam_hq.model.lazy import LazyModel, known_identity


def test_identity_is_recorded_at_load_and_dropped_when_the_file_changes(small_checkpoint, tmp_path):
    path = tmp_path / "m.pth"
    shutil.copy(small_checkpoint, path)
    fresh = LazyModel(path, device="cpu")
    assert not fresh.identity_known and not fresh.loaded
    model = fresh.load()
    assert fresh.loaded and fresh.load() is model  # loaded once
    assert known_identity(path) == (model.name, model.checkpoint_id)
    again = LazyModel(path, device="cpu")
    assert again.identity_known and (again.name, again.checkpoint_id) == (model.name, model.checkpoint_id)
    assert not again.loaded  # the name and id came from the record, not the weights
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert known_identity(path) is None and not LazyModel(path, device="cpu").identity_known


def test_a_corrupt_record_only_costs_a_load(small_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_HQ_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "checkpoint-ids.json").write_text("{not json")
    lazy = LazyModel(small_checkpoint, device="cpu")
    assert not lazy.identity_known
    assert lazy.name == lazy.load().name and known_identity(small_checkpoint) is not None

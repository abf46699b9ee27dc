"""The runnable examples of docs/examples run as they are (on a small random-weight checkpoint
instead of the downloaded one), so the documented API cannot drift from the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.fixture
def ckpt(small_checkpoint) -> str:
    return small_checkpoint


def _run(script: str, ckpt: str, *args: str) -> str:
    env = {**os.environ, "NAPARI_SAM_HQ_MODEL": ckpt, "EXAMPLE_POINTS_PER_SIDE": "4",
           "NAPARI_SAM_HQ_EXAMPLE_NO_RUN": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_predict_2d(ckpt):
    out = _run("predict_2d.py", ckpt)
    assert "one point: (1, 303, 384)" in out and "labels: uint32 (303, 384)" in out


def test_stack_store(ckpt, tmp_path):
    out = _run("stack_store.py", ckpt, str(tmp_path / "store.zarr"))
    assert "slice 4:" in out and "object 1 on slices" in out and (tmp_path / "store.zarr" / "zarr.json").is_file()


def test_segment_everything(ckpt):
    out = _run("segment_everything.py", ckpt)
    assert "objects; median area" in out


@pytest.mark.gui
def test_scripted_napari_session(ckpt, qapp):
    """Runs under the Xvfb display that pytest-xvfb started (the subprocess inherits DISPLAY)."""
    out = _run("scripted_napari.py", ckpt)
    assert "committed ids [1, 2]" in out and "label" in out


def test_annotate_volume(ckpt, tmp_path):
    out = _run("annotate_volume.py", ckpt, str(tmp_path))
    assert "committed label 1 next id 2" in out and "reopened: next id 2" in out
    assert (tmp_path / "volume.labels.zarr" / "zarr.json").is_file()

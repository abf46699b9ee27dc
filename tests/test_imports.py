"""Imports point down only: the engine and the model load neither Qt nor napari."""

from __future__ import annotations

import subprocess
import sys

import pytest

GUI_MODULES = ("qtpy", "napari", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6")


@pytest.mark.parametrize(
    "module",
    [
        "napari_sam_hq.model",
        "napari_sam_hq.engine",
        "napari_sam_hq.engine.automatic",
        "napari_sam_hq.engine.batch",
        "napari_sam_hq.engine.io",
        "napari_sam_hq.engine.measure",
        "napari_sam_hq.cli",
    ],
)
def test_engine_and_model_do_not_import_gui(module):
    code = f"import sys, {module}; print(','.join(m for m in {GUI_MODULES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_command_line_runs_without_gui_modules():
    code = (
        "import sys; from napari_sam_hq.cli import main; main(['models']); "
        f"print('GUI:' + ','.join(m for m in {GUI_MODULES!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "vit_tiny" in out.stdout and out.stdout.strip().splitlines()[-1] == "GUI:", out.stdout


def test_package_import_is_light():
    code = "import sys, napari_sam_hq; print('torch' in sys.modules, 'qtpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_npe2_manifest_validates_with_imports():
    """`npe2 validate --imports napari-sam-hq`: every command's python_name resolves."""
    npe2 = [sys.executable, "-m", "npe2", "validate", "--imports", "napari-sam-hq"]
    out = subprocess.run(npe2, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout

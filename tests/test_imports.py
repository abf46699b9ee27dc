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
        "napari_sam_hq.engine.automatic.everything",
        "napari_sam_hq.engine.io.batch",
        "napari_sam_hq.engine.io.files",
        "napari_sam_hq.engine.io.measure",
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


@pytest.mark.parametrize(
    "module",
    [
        "napari_sam_hq.model",
        "napari_sam_hq.model.lazy",
        "napari_sam_hq.engine",
        "napari_sam_hq.engine.volumes.session",
        "napari_sam_hq.engine.volumes.store",
        "napari_sam_hq.engine.automatic.settings",
        "napari_sam_hq.cli",
    ],
)
def test_what_a_store_reusing_run_needs_does_not_import_torch(module):
    """Torch takes ~1.5 s to import: the packages and the modules a run that finds everything
    stored uses load without it (their torch-using names are imported on first use)."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{module} imported torch"


def test_lazy_package_names_resolve():
    import napari_sam_hq.engine as engine
    import napari_sam_hq.model as model

    for package in (engine, model):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
        with pytest.raises(AttributeError):
            package.no_such_name  # noqa: B018

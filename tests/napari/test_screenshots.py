"""User-guide screenshots, taken in a real (shown) window under Xvfb.

Always checked (the window must show the image, prompts and labels, not a black canvas);
written to docs/images/ when NAPARI_SAM_HQ_DOCS=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from skimage import data, io

from napari_sam_hq._napari import constants as C

from .test_widget import _embed, _wait_preview, _widget

pytestmark = pytest.mark.gui
DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"


def _save(image: np.ndarray, name: str, tmp_path: Path) -> None:
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 10, "the screenshot is blank"
    io.imsave(tmp_path / name, image, check_contrast=False)
    if os.environ.get("NAPARI_SAM_HQ_DOCS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        io.imsave(DOCS / name, image, check_contrast=False)


def test_user_guide_screenshots(make_napari_viewer, qtbot, checkpoint, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    viewer.add_image(data.cell(), name="cells")
    widget = _widget(viewer, checkpoint)
    _embed(qtbot, widget)
    points = viewer.layers[C.POINTS_LAYER]
    points.add([[300, 250], [420, 330]])
    widget.prompts.negative_check.setChecked(True)
    points.add([120, 100])
    viewer.layers[C.BOXES_LAYER].add_rectangles(np.array([[60, 380], [60, 520], [200, 520], [200, 380]]))
    _wait_preview(qtbot, widget, 2)
    qtbot.wait(300)
    _save(viewer.screenshot(canvas_only=False, flash=False), "prompts_and_preview.png", tmp_path)
    widget.commit()
    qtbot.wait(300)
    _save(viewer.screenshot(canvas_only=False, flash=False), "committed_labels.png", tmp_path)

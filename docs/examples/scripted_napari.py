"""A scripted napari session: image, SAM-HQ widget, prompts from code, commit, measure.

    python docs/examples/scripted_napari.py          # opens a window and leaves it open

Set NAPARI_SAM_HQ_EXAMPLE_NO_RUN=1 to close it instead of entering the event loop.
"""

import os

import napari
from qtpy.QtCore import QCoreApplication
from skimage import data

viewer = napari.Viewer()
viewer.add_image(data.coins(), name="coins")
_, widget = viewer.window.add_plugin_dock_widget("napari-sam-hq", "SAM-HQ")
widget.model_combo.setCurrentText(os.environ.get("NAPARI_SAM_HQ_MODEL", "vit_tiny"))
widget.device_combo.setCurrentText("cpu")


def wait(condition, timeout_s=600.0):
    """Let Qt run until ``condition()`` holds (the widget works in background threads)."""
    import time

    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the SAM-HQ widget did not finish in time")
        QCoreApplication.processEvents()
        time.sleep(0.01)


widget.compute_embeddings()
wait(lambda: widget._embed_worker is None)
viewer.layers["SAM-HQ boxes"].add_rectangles([[28, 131], [74, 179]])   # (row, col) corners
viewer.layers["SAM-HQ points"].add([[124, 44]])
wait(lambda: widget._decode_worker is None and sum(map(len, widget._preview_objects.values())) == 2)
ids = widget.commit()
table = widget.measure()
print("committed ids", ids)
print(table[["label", "area", "centroid-0", "centroid-1"]])

if os.environ.get("NAPARI_SAM_HQ_EXAMPLE_NO_RUN"):
    wait(lambda: widget._decode_worker is None and widget._embed_worker is None)  # let threads end
    viewer.close()
else:
    napari.run()

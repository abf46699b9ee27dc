"""A scripted napari session: image, SAM-HQ widget, prompts from code, commit, measure.

    python docs/examples/scripted_napari.py          # opens a window and leaves it open

Set NAPARI_SAM_HQ_EXAMPLE_NO_RUN=1 to close it instead of entering the event loop.
"""

import os

import napari
from skimage import data

viewer = napari.Viewer()
viewer.add_image(data.coins(), name="coins")
_, widget = viewer.window.add_plugin_dock_widget("napari-sam-hq", "SAM-HQ")
widget.settings.model_combo.setCurrentText(os.environ.get("NAPARI_SAM_HQ_MODEL", "vit_tiny"))
widget.settings.device_combo.setCurrentText("cpu")

widget.compute_embeddings()
widget.wait(timeout=600)  # model load and embedding run in the background; errors raise here
viewer.layers["SAM-HQ boxes"].add_rectangles([[28, 131], [74, 179]])   # (row, col) corners
viewer.layers["SAM-HQ points"].add([[124, 44]])
widget.wait(timeout=600)  # the preview of both objects
ids = widget.commit()
table = widget.measure()
print("committed ids", ids)
print(table[["label", "area", "centroid-0", "centroid-1"]])

if os.environ.get("NAPARI_SAM_HQ_EXAMPLE_NO_RUN"):
    widget.wait(timeout=600)  # let background threads end
    viewer.close()
else:
    napari.run()

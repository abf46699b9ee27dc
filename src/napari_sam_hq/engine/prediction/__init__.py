"""Prediction: one image in, masks out. ``SamHQPredictor`` (``set_image`` / ``predict``), the
frames between the original image and the model input (``transforms``: resize, padding,
intensity rules), and the ``ImageEmbedding`` a predictor keeps for an image.

May import: ``napari_sam_hq.model`` and ``engine.masks``. Nothing else of the engine: every
other subpackage builds on this one.
"""

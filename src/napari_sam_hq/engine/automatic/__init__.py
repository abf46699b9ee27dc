"""Automatic segmentation: every object of a slice or a stack without prompts from a user
(``everything``: the point-grid method of segment-anything, with its filters and NMS, and
linking of the slices of a stack; ``settings``: its ``AutoSettings``).

May import: ``volumes``, ``prediction``, ``engine.masks``, ``napari_sam_hq.model``.
"""

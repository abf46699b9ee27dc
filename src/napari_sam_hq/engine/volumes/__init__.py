"""Volumes: stacks and large planes. ``SegmentationSession`` (one image or stack, slice by
slice, tiled planes, any viewing axis), the on-disk ``EmbeddingStore``, the ``TileGrid``,
``Orientation`` (which plane is on screen), propagation through a stack, and the process
helpers that keep a long session lean (``memory``: malloc arenas; ``threads``: OpenMP teams).

May import: ``prediction``, ``engine.masks``, ``napari_sam_hq.model``.
"""

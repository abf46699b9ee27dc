"""Annotation: labels a user builds, and the state of an annotation session. ``labels`` keeps a
label image (in RAM or a zarr on disk) with an id counter, extents, seeds and undo/redo;
``annotator`` is the Qt-free annotation state machine the dock widget drives (encoding queue,
prompts -> preview -> commit, propagation from committed slices, the tools' engine calls).

May import: ``adaptation``, ``automatic``, ``volumes``, ``prediction``, ``engine.masks``,
``napari_sam_hq.model``.
"""

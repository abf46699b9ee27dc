"""Files and runs without a screen: reading images and napari's prompt CSVs, writing label
images and tables (``files``), batch runs on dask (``batch``) and per-object measurement
(``measure``). The command line (``napari_sam_hq.cli``) is built on these.

May import: every other subpackage of the engine, and ``napari_sam_hq.model``.
"""

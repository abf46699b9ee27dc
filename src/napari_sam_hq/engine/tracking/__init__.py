"""Tracking: objects linked through time, with divisions. ``linking`` turns per-frame label
images (ids may differ from frame to frame) into tracks with laptrack (one parent, two
daughters at a division; gaps of missing frames closed), frames read one at a time so memory
does not grow with the movie's length; ``ctc`` writes the Cell Tracking Challenge format
(``labels.tif`` with one id per track, ``res_track.txt``) and makes napari's Tracks layer
data; ``frames`` segments a movie's frames (the instance head, or segment everything).

May import: ``automatic``, ``volumes``, ``prediction``, ``engine.masks``, ``engine.atomic``,
``napari_sam_hq.model``.
"""

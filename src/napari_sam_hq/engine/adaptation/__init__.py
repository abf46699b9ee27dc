"""Adaptation: fitting the model to a user's images, and using it to improve their labels.
``training`` adapts the HQ decoder from label images (encoder frozen, embeddings from the
store); ``refine`` re-segments the objects of a label image prompted by themselves;
``prompts`` holds what both give the decoder (a mask as its mask input, an object's prompt).

May import: ``volumes``, ``prediction``, ``engine.masks``, ``napari_sam_hq.model``.
"""

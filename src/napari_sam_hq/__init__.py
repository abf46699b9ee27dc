"""SAM-HQ (Segment Anything in High Quality) for napari.

Importing this package loads neither torch nor Qt: the model lives in
``napari_sam_hq.model`` (torch only) and the predictor in ``napari_sam_hq.engine``
(numpy + torch).
"""

__version__ = "0.1.0"

"""Settings of the longer engine operations, importable without torch (the command line
builds its options from these defaults before it knows whether a model is needed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AutoSettings:
    """Options of automatic segmentation; defaults suit cells and nuclei (docs/automatic.md).
    ``coarse_to_fine`` (the grid of ``amg``): a sparse grid first, then only the points of the
    dense grid that no accepted mask covers and that are not on flat background; off, every
    point of the dense grid is decoded (the official method)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 25
    max_mask_fraction: float = 0.5
    multimask_output: bool = True
    coarse_to_fine: bool = True  # a sparse grid first, then only the dense points no mask covers
    coarse_points_per_side: int = 0  # the sparse grid (0: a quarter of points_per_side, at least 4)

    def __post_init__(self) -> None:
        problems = []
        if self.points_per_side < 1:
            problems.append(f"points_per_side must be at least 1, got {self.points_per_side}")
        if self.points_per_batch < 1:
            problems.append(f"points_per_batch must be at least 1, got {self.points_per_batch}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                problems.append(f"{name} must be between 0 and 1, got {v}")
        if not 0.0 < self.max_mask_fraction <= 1.0:
            problems.append(f"max_mask_fraction must be in (0, 1], got {self.max_mask_fraction}")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            problems.append("crop_n_layers must be >= 0 and crop_n_points_downscale_factor >= 1")
        if not 0.0 <= self.crop_overlap_ratio < 1.0:
            problems.append(f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio}")
        if self.coarse_points_per_side < 0:
            problems.append(f"coarse_points_per_side must not be negative, got {self.coarse_points_per_side}")
        if self.stability_score_offset < 0 or self.min_mask_region_area < 0:
            problems.append("stability_score_offset and min_mask_region_area must not be negative")
        if problems:
            raise ValueError("; ".join(problems))

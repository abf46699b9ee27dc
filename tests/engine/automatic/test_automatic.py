"""Segment everything: logic with exact answers, the rule model end to end (2D, tiles, 3D),
parity with the official SamAutomaticMaskGenerator on the same random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam_hq.engine import EmbeddingStore, SamHQPredictor, SegmentationSession
from napari_sam_hq.engine.automatic.everything import (
    AutoMask,
    AutoSettings,
    box_iou,
    crop_tiles,
    iter_generate_masks,
    masks_to_labels,
    nms,
    point_grid,
    remove_small_regions,
    stability_score,
)
from napari_sam_hq.engine.automatic.linking import link_slices
from napari_sam_hq.engine.automatic.modes import iter_segment_everything
from napari_sam_hq.engine.volumes.tiling import Tile
from napari_sam_hq.model.common import exhaust

from ...conftest import blob_image
from ...oracles import import_official
from ..fake_predictor import FakeModel, FakePredictor, disc_image

RULE = AutoSettings(points_per_side=16, stability_score_thresh=0.9, min_mask_region_area=0)


def _session(image, **kw):
    return SegmentationSession(FakeModel(), image, store=EmbeddingStore(None, max_in_memory=64),
                               predictor_factory=FakePredictor, **kw)


def _matches(labels, truth, min_iou=0.95):
    """Every true object has exactly one label with IoU >= min_iou, and no label is left over."""
    found = {int(i) for i in np.unique(labels) if i}
    used = set()
    for t in (int(i) for i in np.unique(truth) if i):
        obj = truth == t
        ids, counts = np.unique(labels[obj], return_counts=True)
        best = int(ids[np.argmax(counts)])
        if best == 0:
            return False
        other = labels == best
        if (obj & other).sum() / (obj | other).sum() < min_iou or best in used:
            return False
        used.add(best)
    return used == found


def test_nms_and_box_iou_exact():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)
    assert nms(boxes, np.array([0.9, 0.95, 0.5, 0.9]), 0.5).tolist() == [1, 2]
    assert nms(boxes, np.array([0.9, 0.95, 0.5, 0.9]), 0.7).tolist() == [1, 0, 2]  # 0.68 < 0.7
    assert nms(boxes, np.array([1.0, 0.0, 0.0, 1.0]), 0.99).tolist() == [0, 1, 2]  # 3 == 0: dropped; ties by index


def test_stability_score_exact():
    ramp = torch.arange(-5.0, 5.0).repeat(4, 1)[None]  # 4 rows of -5 .. 4
    steep = torch.where(torch.arange(10) < 5, -10.0, 10.0).repeat(4, 1)[None]
    empty = torch.full((1, 4, 10), -3.0)
    scores = stability_score(torch.cat([ramp, steep, empty]), 0.0, 1.0)
    # ramp: > 1 -> {2, 3, 4}; > -1 -> {0 .. 4}: 3 / 5. steep: stable. empty: 0.
    np.testing.assert_array_equal(scores, [0.6, 1.0, 0.0])


def test_small_holes_and_islands():
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5, 5] = False  # a 1-pixel hole
    m[4:9, 8:10] = False  # a 10-pixel hole
    m[15, 15] = True  # a 1-pixel island
    filled, changed = remove_small_regions(m, 5, mode="holes")
    assert changed and filled[5, 5] and not filled[4:9, 8:10].any()
    clean, changed = remove_small_regions(m, 5, mode="islands")
    assert changed and not clean[15, 15] and clean[2, 2]
    again, changed_again = remove_small_regions(clean, 5, mode="islands")
    assert not changed_again and np.array_equal(again, clean)


def test_labels_smaller_objects_keep_overlaps_and_raster_ids():
    big = np.zeros((10, 10), bool)
    big[1:9, 1:9] = True
    small = np.zeros((10, 10), bool)
    small[6:8, 6:8] = True
    corner = np.zeros((10, 10), bool)
    corner[0, 9] = True

    def auto(mask):
        rows, cols = np.nonzero(mask)
        box = (cols.min(), rows.min(), cols.max(), rows.max())
        return AutoMask(box, mask[box[1] : box[3] + 1, box[0] : box[2] + 1], 0.9, 0.95, (0, 0), Tile(0, 0, 10, 10))

    labels = masks_to_labels([auto(small), auto(big), auto(corner)], (10, 10))
    assert labels[0, 9] == 1  # first in raster order
    assert labels[1, 1] == 2 and (labels[6:8, 6:8] == 3).all()  # the small one keeps its pixels
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_link_slices_by_overlap():
    a = np.zeros((3, 8, 8), np.int64)
    a[0, 0:4, 0:4] = 5  # object A on slices 0-2
    a[1, 0:4, 1:5] = 2
    a[2, 0:4, 1:5] = 9
    a[0, 5:8, 5:8] = 7  # object B on slice 0 only
    a[2, 5:8, 5:8] = 3  # reappears on slice 2: new id (not adjacent)
    out = link_slices(list(a), iou_threshold=0.5)
    assert len({out[z][0, 1] for z in range(3)}) == 1
    assert out[0][6, 6] != out[2][6, 6] and out[0][6, 6] and out[2][6, 6]
    assert set(np.unique(out)) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="iou_threshold"):
        link_slices(list(a), iou_threshold=0)


def test_grid_and_crops_equal_the_official_ones():
    amg = import_official().utils.amg
    np.testing.assert_allclose(point_grid(7), amg.build_point_grid(7))
    for layers in (0, 1, 2):
        boxes, idx = amg.generate_crop_boxes((300, 410), layers, 512 / 1500)
        ours = crop_tiles((300, 410), layers, 512 / 1500)
        assert [[t.x0, t.y0, t.x1, t.y1] for t, _ in ours] == boxes and [i for _, i in ours] == idx


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="points_per_side must be at least 1"):
        AutoSettings(points_per_side=0)
    with pytest.raises(ValueError, match="pred_iou_thresh must be between 0 and 1.*max_mask_fraction"):
        AutoSettings(pred_iou_thresh=2, max_mask_fraction=0)


def test_rule_model_finds_every_disc_once():
    image, truth = disc_image((300, 360), [(60, 60, 30), (150, 200, 45), (240, 80, 25), (80, 290, 35)])
    labels = exhaust(iter_segment_everything(_session(image), [()], RULE))
    assert labels.shape == (300, 360) and labels.dtype == np.uint32
    assert _matches(labels, truth)


def test_tiles_are_merged_without_duplicates_or_cut_objects():
    # discs on tile seams (tiles 512 with overlap 128 on a 900 x 1100 plane)
    discs = [(250, 450, 50), (450, 300, 40), (700, 560, 45), (120, 1000, 30), (800, 150, 35)]
    image, truth = disc_image((900, 1100), discs, seed=1)
    session = _session(image, tile_size=512, overlap=128)
    assert session.grid.tiled
    labels = exhaust(iter_segment_everything(session, [()], RULE))
    assert _matches(labels, truth)


def test_stack_is_linked_into_3d_objects():
    planes, truths = [], []
    for z in range(4):
        img, t = disc_image((200, 220), [(60, 60 + 3 * z, 30), (140, 150, 35 - 2 * z)], seed=z)
        planes.append(img)
        truths.append(t)
    labels = exhaust(iter_segment_everything(_session(np.stack(planes)), None, RULE))
    assert labels.shape == (4, 200, 220)
    assert set(np.unique(labels)) == {0, 1, 2}  # two 3D objects
    for z in range(4):
        assert _matches(labels[z], truths[z])
    assert len({int(labels[z][60, 60 + 3 * z]) for z in range(4)}) == 1


def test_matches_the_official_generator_on_the_same_weights(small_pair):
    """Same random weights, same settings, with crop layers: every official mask is ours too
    (IoU > 0.99, same predicted IoU and stability score), and no mask more. Random weights give
    near-identical large masks that box NMS would collapse to one, so NMS is off here; it is
    tested exactly above."""
    sah = import_official()
    image = blob_image(180, 240, seed=11)
    kw = dict(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
              stability_score_offset=0.05, box_nms_thresh=1.0, crop_n_layers=1, crop_nms_thresh=1.0)
    official = sah.SamAutomaticMaskGenerator(small_pair.official, output_mode="binary_mask", **kw)
    with torch.inference_mode():
        ref = official.generate(image)
    session = SegmentationSession(small_pair.ours, image, rgb=True, store=EmbeddingStore(None))
    full_grid = AutoSettings(min_mask_region_area=0, max_mask_fraction=1.0, coarse_to_fine=False, **kw)
    ours = exhaust(iter_generate_masks(session, (), full_grid))
    assert len(ref) > 20 and len(ours) == len(ref)
    by_point = {(round(m.point[0], 3), round(m.point[1], 3)): m for m in ours}
    for r in ref:
        m = by_point[tuple(round(v, 3) for v in r["point_coords"][0])]
        seg, full = r["segmentation"], m.full(r["segmentation"].shape)
        assert (full & seg).sum() / (full | seg).sum() > 0.99
        assert m.predicted_iou == pytest.approx(r["predicted_iou"], abs=1e-3)
        assert m.stability_score == pytest.approx(r["stability_score"], abs=2e-2)
        x, y, w, h = r["crop_box"]
        assert m.crop.box == (y, x, y + h, x + w)


def test_score_filter_skips_the_mask_heads_without_changing_results(small_pair):
    predictor = SamHQPredictor(small_pair.ours)
    predictor.set_image(blob_image(128, 160, seed=3))
    pts = point_grid(6) * [160, 128]
    coords, labels = pts[:, None, :], np.ones((len(pts), 1), np.int64)
    all_logits, all_scores, kept_all = predictor.predict_logits(coords, labels)
    assert len(kept_all) == len(pts)
    floor = float(np.median(all_scores.numpy()))
    logits, scores, kept = predictor.predict_logits(coords, labels, min_score=floor)
    assert 0 < len(kept) < len(pts)
    np.testing.assert_array_equal(kept, np.nonzero(all_scores.numpy() > floor)[0])
    torch.testing.assert_close(logits, all_logits[kept], atol=1e-5, rtol=0)
    # and equal to the interactive path's best candidate
    batch = predictor.predict_batch(point_coords=coords[kept], point_labels=labels[kept], multimask_output=True)
    np.testing.assert_allclose(batch.low_res_logits[:, 0], logits.numpy(), atol=1e-5)


def test_real_random_model_end_to_end_on_a_stack(small_pair):
    stack = np.stack([blob_image(96, 112, seed=s, channels=1) for s in range(2)])
    session = SegmentationSession(small_pair.ours, stack, store=EmbeddingStore(None))
    settings = AutoSettings(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            min_mask_region_area=4, max_mask_fraction=1.0)
    steps = []
    gen = iter_segment_everything(session, None, settings)
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        labels = stop.value
    assert labels.shape == (2, 96, 112) and labels.max() >= 1
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0
    ids = np.unique(labels)
    assert ids.tolist() == list(range(len(ids)))  # 0..N, no gaps


@pytest.mark.parametrize("seed", [0, 1])
def test_coarse_to_fine_finds_the_full_grids_objects_with_a_third_of_the_prompts(seed, monkeypatch):
    """Discs of many sizes: the sparse grid misses the small ones, the dense points left (not
    covered, not on flat background) find them. Same objects as the full grid (each matched
    with IoU >= 0.95), at least 3x fewer prompts decoded."""
    rng = np.random.default_rng(seed)
    discs = []
    while len(discs) < 14:
        r = int(rng.integers(8, 30))  # a 24-point grid on 320 px has a point in every disc
        cy, cx = (int(v) for v in rng.integers(r + 2, 320 - r - 2, 2))
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 4) ** 2 for y, x, q in discs):
            discs.append((cy, cx, r))
    image, truth = disc_image((320, 320), discs, seed=seed)
    prompts = []
    decode = FakePredictor.predict_logits

    def counted(self, point_coords, *args, **kwargs):
        prompts.append(len(point_coords))
        return decode(self, point_coords, *args, **kwargs)

    monkeypatch.setattr(FakePredictor, "predict_logits", counted)
    labels = {}
    for c2f in (False, True):
        prompts.clear()
        settings = AutoSettings(points_per_side=24, stability_score_thresh=0.9, min_mask_region_area=0,
                                coarse_to_fine=c2f)
        labels[c2f] = (exhaust(iter_segment_everything(_session(image), [()], settings)), sum(prompts))
    (full, n_full), (fine, n_fine) = labels[False], labels[True]
    assert _matches(full, truth) and int(full.max()) == len(discs)  # the full grid finds them all
    assert int(fine.max()) == int(full.max())
    for i in range(1, int(full.max()) + 1):
        m = full == i
        j = np.bincount(fine[m]).argmax()
        assert j and (m & (fine == j)).sum() / (m | (fine == j)).sum() >= 0.95
    assert n_full == 24 * 24 and n_full / n_fine >= 3, (n_full, n_fine)

"""Refining label images a user already has: the rules for shared pixels (exact, no model),
the plumbing (stacks, tiles, the mask input's frame, safeguards, the table) with the
deterministic rule predictor, and, with a seeded SAM-HQ whose decoder was adapted on
synthetic cells, refined labels that are closer to the truth than the eroded and dilated
ones it was given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sam_hq.engine import SegmentationSession
from napari_sam_hq.engine.adaptation.refine import (
    KEPT_CHANGED,
    KEPT_EMPTY,
    KEPT_SMALL,
    REFINED,
    RefineSettings,
    _assemble,
    iter_refine,
    object_prompts,
)
from napari_sam_hq.engine.adaptation.training import (
    TrainingImage,
    TrainSettings,
    apply_state,
    iter_train,
    objects_from_labels,
)
from napari_sam_hq.engine.prediction.transforms import Frames
from napari_sam_hq.engine.volumes.tiling import TileGrid
from napari_sam_hq.model import load_model
from napari_sam_hq.model.common import exhaust

from ..fake_predictor import FakeModel, FakePredictor, disc_image


def test_shared_pixels_stay_with_their_owner_else_the_smaller_object():
    plane = np.zeros((6, 8), np.int32)
    plane[1:5, 0:4] = 1  # refined: grows right
    plane[1:5, 5:7] = 2  # refined: grows left, into 1's new mask
    plane[0, 7] = 3  # kept: nobody may take it
    big = (np.s_[0:6, 0:8], np.ones((6, 8), bool))  # 1 now claims the whole plane
    small = (np.s_[1:5, 3:7], np.ones((4, 4), bool))  # 2 claims columns 3-6
    out, box = _assemble(plane, [(1, *big), (2, *small)])
    expected = np.ones((6, 8), np.int32)
    expected[1:5, 4:7] = 2  # the smaller object wins column 4 (nobody's) ...
    expected[1:5, 3] = 1  # ... but not column 3, which was 1's
    expected[0, 7] = 3
    np.testing.assert_array_equal(out, expected)
    assert box == (0, 0, 6, 8)
    # an object that shrinks gives its pixels back to the background
    out, box = _assemble(plane, [(1, np.s_[2:4, 0:2], np.ones((2, 2), bool))])
    assert (out == 1).sum() == 4 and (out == 2).sum() == 8 and box == (1, 0, 5, 4)


def _fake_session(image, **kwargs):
    return SegmentationSession(FakeModel(), image, predictor_factory=FakePredictor, **kwargs)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_a_stack_is_refined_slice_by_slice_with_ids_kept():
    discs = [(30, 40, 14), (70, 100, 18), (40, 140, 10)]
    planes, truths = zip(*(disc_image((110, 170), discs, seed=s) for s in range(3)), strict=True)
    image, truth = np.stack(planes), np.stack(truths)
    bad = np.zeros_like(truth)
    for z in range(3):
        for i in (1, 2, 3):
            m = ndimage.binary_erosion(truth[z] == i, iterations=2)
            bad[z][m] = i * 10 + z  # ids need not be 1..n and may differ per slice
    bad[1][100:104, 2:6] = 99  # a small dark object: no answer -> kept
    bad[2][60, 60] = 98  # one pixel: too small to prompt
    import napari_sam_hq.engine.adaptation.refine as refine_module

    one_by_one = bad.copy()
    old_budget, refine_module._ANSWER_BYTES = refine_module._ANSWER_BYTES, 1  # one object per batch
    try:
        exhaust(iter_refine(_fake_session(image), bad)).write(one_by_one)
    finally:
        refine_module._ANSWER_BYTES = old_budget
    gen = iter_refine(_fake_session(image), bad)
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert [round(f, 2) for f, _ in steps] == [0.33, 0.67, 1.0]
    out = bad.copy()
    result.write(out)
    np.testing.assert_array_equal(out, one_by_one)  # batches of any size, the same labels
    for z in range(3):
        for i in (1, 2, 3):
            assert _iou(out[z] == i * 10 + z, truth[z] == i) > 0.93
            assert _iou(bad[z] == i * 10 + z, truth[z] == i) < 0.82
    assert (out[1] == 99).sum() == 16 and out[2][60, 60] == 98
    table = result.table()
    assert list(table.columns) == ["label", "slice", "area_before", "area_after", "iou", "status"]
    status = dict(zip(zip(table["label"], table["slice"], strict=True), table["status"], strict=True))
    assert status[(99, 1)] == KEPT_EMPTY and status[(98, 2)] == KEPT_SMALL and status[(21, 1)] == REFINED
    row = table[(table.label == 21) & (table.slice == 1)].iloc[0]
    assert row.area_after == (out[1] == 21).sum() and row.area_before == (bad[1] == 21).sum()
    # planes without objects are read and skipped; only changed boxes are kept
    assert {p.key for p in result.planes} == {(0,), (1,), (2,)}


def test_tiled_planes_get_the_mask_input_in_the_answering_tiles_frame():
    grid = TileGrid((700, 900), tile_size=512, overlap=128)
    mask = np.zeros((60, 50), bool)
    mask[10:50, 5:45] = ndimage.binary_dilation(np.eye(40, dtype=bool), iterations=6)
    origin = (560, 700)  # the bottom-right tile answers
    obj = object_prompts(mask, origin, grid, RefineSettings())
    tile = obj["tile"]
    assert tile == grid.choose((700 + 5, 560 + 10, 700 + 44, 560 + 49)) and tile.x0 > 0 and tile.y0 > 0
    frames = Frames.for_image(tile.y1 - tile.y0, tile.x1 - tile.x0)
    back = frames.masks_to_original(torch.from_numpy(obj["mask_input"])[None, None], 0.0)[0, 0].numpy()
    placed = np.zeros((tile.y1 - tile.y0, tile.x1 - tile.x0), bool)
    placed[origin[0] - tile.y0 : origin[0] - tile.y0 + 60, origin[1] - tile.x0 : origin[1] - tile.x0 + 50] = mask
    assert _iou(back, placed) > 0.85
    np.testing.assert_array_equal(obj["box"], [705, 570, 744, 609])
    assert mask[int(obj["point_coords"][0, 1]) - 560, int(obj["point_coords"][0, 0]) - 700]
    # through a tiled session: an object cut by nothing comes back whole
    image, truth = disc_image((700, 900), [(600, 760, 40), (100, 100, 30)])
    bad = ndimage.binary_erosion(truth > 0, iterations=5) * truth
    out = bad.copy()
    exhaust(iter_refine(_fake_session(image, tile_size=512, overlap=128), bad)).write(out)
    for i in (1, 2):
        assert _iou(out == i, truth == i) > 0.93


def test_a_refinement_that_jumps_elsewhere_keeps_the_old_mask():
    image, truth = disc_image((120, 160), [(60, 80, 40)])
    part = np.zeros_like(truth)
    part[50:60, 75:85] = 7  # a small piece of a large bright disc: the answer grows past its box
    result = exhaust(iter_refine(_fake_session(image), part, settings=RefineSettings(min_iou=0.5)))
    assert [c.status for c in result.changes] == [KEPT_CHANGED] and not result.planes
    assert result.changes[0].iou < 0.5 and result.changes[0].area_after == 100
    result = exhaust(iter_refine(_fake_session(image), part, settings=RefineSettings(min_iou=0.4)))
    out = part.copy()
    result.write(out)
    assert result.changes[0].status == REFINED and result.changes[0].area_after == (out == 7).sum() > 200


def test_bad_input_is_refused():
    image, truth = disc_image((60, 80), [(30, 40, 10)])
    with pytest.raises(ValueError, match="shape"):
        exhaust(iter_refine(_fake_session(image), truth[:50]))
    with pytest.raises(ValueError, match="integers"):
        exhaust(iter_refine(_fake_session(image), truth.astype(np.float32)))
    with pytest.raises(ValueError, match="box or an interior point"):
        RefineSettings(use_box=False, use_point=False)


def _cells(seed, h=128, w=160, n=6):
    """Touching and overlapping ellipses of three brightnesses, blurred, with noise; returns
    (image, truth labels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), np.int32)
    for i in range(1, n + 1):
        cy, cx = rng.uniform(18, h - 18), rng.uniform(18, w - 18)
        a, b, t = rng.uniform(8, 18), rng.uniform(6, 12), rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / a
        v = (-(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)) / b
        labels[u * u + v * v <= 1] = i
    img = np.where(labels > 0, 170, 40).astype(float) + 25 * (labels % 3)
    img = ndimage.gaussian_filter(img, 1.5) + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def _degraded(labels, seed):
    """Each object eroded or dilated by 2-3 pixels (a threshold's or another tool's labels)."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    for i in range(1, labels.max() + 1):
        op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
        out[op(labels == i, iterations=int(rng.integers(2, 4))) & (out == 0)] = i
    return out


def _mean_iou(labels, truth):
    return float(np.mean([_iou(labels == i, truth == i) for i in np.unique(truth) if i]))


def test_an_adapted_model_refines_labels_closer_to_the_truth(small_checkpoint):
    model = load_model(small_checkpoint, device="cpu")
    data = []
    for seed in range(4):
        image, truth = _cells(seed)
        predictor = SegmentationSession(model, image).tile_predictor((), TileGrid(truth.shape).tiles[0])
        data.append(TrainingImage(predictor.get_image_embedding(early=False), objects_from_labels(truth)))
    settings = TrainSettings(train="decoder", prompts=("refine",), epochs=8, steps_per_epoch=8, batch_objects=8,
                             lr=3e-3, seed=0)
    result = exhaust(iter_train(model, data, settings))
    adapted = apply_state(model, result.state)
    print(f"held-out IoU {result.iou_before:.3f} -> {result.iou_after:.3f} "
          f"({result.steps} steps, {result.seconds:.0f} s)")
    for seed in (100, 101):  # held-out images of the same generator
        image, truth = _cells(seed)
        bad = _degraded(truth, seed)
        outs = {}
        for name, m in (("base", model), ("adapted", adapted)):
            out = bad.copy()
            exhaust(iter_refine(SegmentationSession(m, image), bad)).write(out)
            outs[name] = _mean_iou(out, truth)
        before = _mean_iou(bad, truth)
        print(f"image {seed}: mean IoU with the truth {before:.3f} given, {outs['base']:.3f} refined by the "
              f"random base (its answers are refused), {outs['adapted']:.3f} by the adapted model")
        assert outs["base"] >= before - 0.01  # the safeguard keeps what a bad model would ruin
        assert outs["adapted"] > before + 0.02


def test_the_annotator_refines_across_planes_of_any_orientation_as_one_undo_step():
    from napari_sam_hq.engine.annotation.annotator import Annotator
    from napari_sam_hq.engine.annotation.labels import LabelVolume
    from napari_sam_hq.engine.volumes.store import EmbeddingStore

    # a volume whose X-Z planes hold discs: segmented after a turn to those planes
    discs = [(20, 30, 9), (40, 70, 12)]
    planes, truths = zip(*(disc_image((60, 100), discs, seed=s) for s in range(4)), strict=True)
    image = np.stack(planes, axis=1)  # Z x Y x X with the discs in Z-X planes at each y
    truth = np.stack(truths, axis=1)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, 1, :] = ndimage.generate_binary_structure(2, 1)  # erode within Z-X planes only
    given = np.where(ndimage.binary_erosion(truth > 0, in_plane, iterations=2), truth, 0).astype(np.uint32)
    labels = LabelVolume(given.copy())
    ann = Annotator(image, model=FakeModel(), store=EmbeddingStore(None), labels=labels,
                    predictor_factory=FakePredictor)
    ann.set_orientation((0, 2))
    result = exhaust(ann.iter_refine(given))
    assert {p.key for p in result.planes} == {(0,), (1,), (2,), (3,)}
    assert ann.apply_refine(result) > 0
    for i in (1, 2):
        assert _iou(labels.array == i, truth == i) > 0.9 > _iou(given == i, truth == i)
    assert labels.undo() and np.array_equal(labels.array, given)  # one step undoes all planes
    assert not labels.undo()
    # training data comes with the tile that answers each object
    found = exhaust(ann.iter_training_images(truth.astype(np.uint32), [(1,), (2,)], name="vol"))
    assert [len(t.objects) for t in found] == [2, 2] and found[0].objects[0].shape == (60, 100)
    assert found[0].name == "vol[1]"
    with pytest.raises(ValueError, match="do not fit"):
        exhaust(ann.iter_refine(given[:, :3]))


def test_huge_sparse_ids_are_found_without_a_list_as_long_as_the_largest():
    """64-bit ids (hashes, other tools' ids) cost what their objects cost; refine keeps them."""
    from napari_sam_hq.engine.masks import object_slices

    image, truth = disc_image((80, 100), [(25, 30, 10), (50, 70, 12)])
    big = np.zeros(truth.shape, np.uint64)
    big[truth == 1] = 2**40 + 7
    big[truth == 2] = 5
    found = object_slices(big)
    assert [i for i, _ in found] == [5, 2**40 + 7]
    for i, sl in found:
        assert (big[sl] == i).sum() == (big == i).sum()
    assert object_slices(np.zeros((3, 3), np.uint64)) == [] and object_slices(np.full((2, 2), 2**50, np.uint64)) \
        == [(2**50, (slice(0, 2), slice(0, 2)))]
    bad = np.where(ndimage.binary_erosion(truth > 0, iterations=2), big, 0).astype(np.uint64)
    out = bad.copy()
    exhaust(iter_refine(_fake_session(image), bad)).write(out)
    assert _iou(out == 2**40 + 7, truth == 1) > 0.9 and set(np.unique(out)) == {0, 5, 2**40 + 7}

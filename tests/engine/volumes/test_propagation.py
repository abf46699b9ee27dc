"""Propagation through z on synthetic volumes with known ground truth (deterministic model),
and end to end with a real random-weight SAM-HQ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam_hq.engine.volumes.propagation import (
    PropagationSettings,
    iter_propagate,
    prompt_from_mask,
    seeds_from_labels,
    write_propagation,
)
from napari_sam_hq.engine.volumes.session import SegmentationSession
from napari_sam_hq.engine.volumes.store import EmbeddingStore
from napari_sam_hq.model import build_sam_hq, prepare_for_inference
from napari_sam_hq.model.common import exhaust
from napari_sam_hq.model.registry import ModelSpec

from ...conftest import SMALL_VIT, run_python
from ..fake_predictor import FakeModel, FakePredictor, ellipsoid_volume, paint_seeds


def _session(image, model=None):
    return SegmentationSession(model or FakeModel(), image, store=EmbeddingStore(None, max_in_memory=64),
                               predictor_factory=FakePredictor)


def _dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def _propagate(image, truth, seed_slices, settings=None):
    seeds = seeds_from_labels(truth, slices={i: set(z) for i, z in seed_slices.items()})
    found = exhaust(iter_propagate(_session(image), seeds, settings=settings))
    labels = paint_seeds(truth.shape, seeds, truth.dtype)
    for z, plane in write_propagation(labels, found).items():
        labels[z] = plane
    return labels, found


def test_prompt_from_mask_is_the_box_and_the_most_interior_pixel():
    mask = np.zeros((50, 60), bool)
    mask[10:31, 20:51] = True
    p = prompt_from_mask(mask)
    assert p["box"].tolist() == [20, 10, 50, 30]
    assert p["point_coords"].tolist() == [[35, 20]] and p["point_labels"].tolist() == [1]


def test_the_interior_point_of_a_huge_mask_is_found_in_bounded_memory():
    """A disc filling a 3000 x 3000 plane (what random weights answer, or a large nucleus):
    the point is a pixel of the mask near its centre; the search's numpy allocations
    (tracemalloc, a fresh process) stay near the 1 Mpx budget, where the whole-box distance
    transform took ~16 bytes a pixel (144 MB here)."""
    yy, xx = np.ogrid[:3000, :3000]
    disc = (yy - 1400) ** 2 + (xx - 1600) ** 2 <= 1300**2
    p = prompt_from_mask(disc)
    (x, y), = p["point_coords"].astype(int).tolist()
    assert disc[y, x] and abs(x - 1600) <= 3 and abs(y - 1400) <= 3
    assert p["box"].tolist() == [300, 100, 2900, 2700]
    code = (
        "import tracemalloc, numpy as np\n"
        "from napari_sam_hq.engine.volumes.propagation import prompt_from_mask\n"
        "mask = np.ones((3000, 3000), bool); mask[0] = False\n"
        "tracemalloc.start(); prompt_from_mask(mask); print(tracemalloc.get_traced_memory()[1] / 2**20)\n"
    )
    out = run_python(code)
    assert float(out) < 40, f"prompt_from_mask peaked at {float(out):.0f} MB"


def test_a_sparse_huge_mask_falls_back_to_every_pixel():
    mask = np.zeros((2000, 2000), bool)
    mask[1::4, 1::4] = True  # every 4th pixel: a stride-2 grid would see none of it
    (x, y), = prompt_from_mask(mask)["point_coords"].astype(int).tolist()
    assert mask[y, x]


def test_one_ellipsoid_from_its_middle_slice_stops_where_it_ends():
    image, truth = ellipsoid_volume((30, 128, 128), (((14, 64, 64), (9, 40, 30)),), seed=1)
    labels, found = _propagate(image, truth, {1: [14]})
    obj = truth == 1
    assert _dice(labels == 1, obj) > 0.95
    z_truth = np.nonzero(obj.any(axis=(1, 2)))[0]
    z_found = np.nonzero((labels == 1).any(axis=(1, 2)))[0]
    # never beyond the object; at most its thinnest end slice is missed
    assert z_found.min() >= z_truth.min() and z_found.max() <= z_truth.max()
    assert z_found.min() <= z_truth.min() + 1 and z_found.max() >= z_truth.max() - 1
    assert 14 not in found  # seeds are not rewritten


def test_touching_blobs_propagate_together_with_their_own_ids():
    blobs = (((10, 50, 45), (7, 22, 20)), ((12, 50, 86), (8, 22, 22)))  # touch near x = 65
    image, truth = ellipsoid_volume((24, 100, 130), blobs, seed=2)
    assert ((truth == 1) & np.roll(truth == 2, -1, axis=2)).any()  # they do touch
    calls = []
    session = _session(image)
    segment = session.segment
    session.segment = lambda key, objects, **kw: calls.append((key, len(objects))) or segment(key, objects, **kw)
    seeds = seeds_from_labels(truth, slices={1: {10}, 2: {12}})
    # the stand-in decoder segments the bright component under a point: touching blobs are one
    # component, and only a box tells them apart (a trained SAM-HQ separates them by appearance)
    found = exhaust(iter_propagate(session, seeds, settings=PropagationSettings(prompt="box+point+mask")))
    assert any(n == 2 for _, n in calls)  # both objects in one call per slice
    labels = paint_seeds(truth.shape, seeds, truth.dtype)
    for z, plane in write_propagation(labels, found).items():
        labels[z] = plane
    for i in (1, 2):
        d = _dice(labels == i, truth == i)
        print(f"object {i}: Dice {d:.3f}")
        assert d > 0.85


def test_between_two_annotated_slices_it_fills_from_both_ends():
    image, truth = ellipsoid_volume((30, 128, 128), (((15, 64, 64), (12, 40, 30)),), seed=3)
    labels, found = _propagate(image, truth, {1: [8, 20]})
    assert set(range(9, 20)) <= set(found)  # every slice in between
    assert _dice(labels == 1, truth == 1) > 0.95


def test_thresholds_stop_it():
    image, truth = ellipsoid_volume((20, 96, 96), (((10, 48, 48), (6, 30, 30)),), seed=4)
    _, found = _propagate(image, truth, {1: [10]}, PropagationSettings(score_threshold=0.95))
    assert not found  # the rule model's score is 0.9
    _, found = _propagate(image, truth, {1: [10]}, PropagationSettings(max_slices=2))
    assert sorted(found) == [8, 9, 11, 12]
    with pytest.raises(ValueError, match="iou_threshold"):
        PropagationSettings(iou_threshold=1.5)


def test_repropagation_after_a_correction_replaces_the_old_result_and_keeps_others():
    image, truth = ellipsoid_volume((16, 96, 96), (((8, 48, 48), (5, 30, 30)),), seed=5)
    labels = np.zeros_like(truth)
    labels[8][truth[8] == 1] = 1
    labels[2, 0:5, 0:5] = 1  # a stale, wrong piece of object 1 far away
    labels[9, 40:44, 40:44] = 7  # someone else's label inside the object: kept
    seeds = {1: {8: truth[8] == 1}}
    found = exhaust(iter_propagate(_session(image), seeds))
    planes = write_propagation(labels, found, seeds={1: {8}})
    assert not (planes[2] == 1).any()
    assert (planes[9][40:44, 40:44] == 7).all()
    assert 8 not in planes  # the seed slice is untouched


def test_bad_requests_are_refused():
    image, truth = ellipsoid_volume((4, 64, 64), (((2, 32, 32), (1, 10, 10)),))
    with pytest.raises(ValueError, match="needs a stack"):
        exhaust(iter_propagate(_session(image[0]), {1: {0: truth[0] > 0}}))
    with pytest.raises(ValueError, match="axis 2"):
        exhaust(iter_propagate(_session(image), {1: {2: truth[2] > 0}}, axis=2))


def test_real_model_end_to_end_one_object_one_id():
    """A random-weight SAM-HQ (small ViT) runs the whole path; masks mean nothing, the
    bookkeeping must still hold: one id, seeds untouched, batched per slice."""
    torch.manual_seed(0)
    model = prepare_for_inference(build_sam_hq(ModelSpec("small_vit", SMALL_VIT)))
    image, truth = ellipsoid_volume((5, 96, 120), (((2, 48, 60), (3, 30, 30)),), seed=6)
    session = SegmentationSession(model, image, store=EmbeddingStore(None))
    [seed] = session.segment((2,), [{"box": [30, 18, 90, 78]}])
    seeds = {3: {2: seed.mask}}
    found = exhaust(iter_propagate(session, seeds, settings=PropagationSettings(
        score_threshold=0.0, iou_threshold=0.0, min_area=1)))
    assert set(found) == {0, 1, 3, 4}
    labels = np.zeros(truth.shape, np.uint32)
    labels[2][seed.mask] = 3
    planes = write_propagation(labels, found, seeds={3: {2}})
    assert all(set(np.unique(p)) <= {0, 3} for p in planes.values())


def test_a_propagation_keeps_its_masks_packed():
    """Masks kept for every reached slice are boxes, compressed: the same pixels, a few KB."""
    import sys

    from napari_sam_hq.engine.volumes.session import ObjectMask
    from napari_sam_hq.engine.volumes.tiling import Tile

    mask = np.zeros((2048, 2048), bool)
    mask[300:420, 1000:1111] = True
    mask[350, 1050] = False
    obj = ObjectMask(mask, 0.8, np.zeros((256, 256), np.float32), Tile(0, 0, 2048, 2048))
    packed = obj.packed()
    np.testing.assert_array_equal(packed.mask, mask)
    assert packed.box == (300, 1000, 420, 1111) and packed.score == 0.8 and packed.tile == obj.tile
    assert sys.getsizeof(packed.crop[0]) < 20_000 < mask.nbytes
    empty = ObjectMask(np.zeros((8, 8), bool), 0.1, obj.low_res_logits, obj.tile).packed()
    assert empty.box is None and not empty.mask.any() and empty.mask.shape == (8, 8)


def test_a_propagation_keeps_few_tiles_decoder_ready_then_gives_the_limit_back():
    """Each slice's tiles serve a propagation once or twice: it keeps at most
    PROPAGATION_READY_TILES decoder-ready (the ones there before go first), and the session
    keeps its own number again after it, also when the propagation is stopped midway."""
    from napari_sam_hq.engine.volumes.propagation import PROPAGATION_READY_TILES

    image, truth = ellipsoid_volume((30, 96, 96), (((14, 48, 48), (12, 30, 24)),), seed=3)
    session = SegmentationSession(FakeModel(), image, store=EmbeddingStore(None, max_in_memory=64),
                                  predictor_factory=FakePredictor, max_ready=8)
    whole = session.grid.tiles[0]
    for z in range(8):
        session.tile_predictor((z,), whole)
    assert len(session._ready) == 8
    seeds = seeds_from_labels(truth, slices={1: {14}})
    sizes = [len(session._ready) for _ in iter_propagate(session, seeds)]
    assert len(sizes) > 10 and max(sizes) <= PROPAGATION_READY_TILES < 8
    for z in range(8):
        session.tile_predictor((z,), whole)
    assert len(session._ready) == 8
    steps = iter_propagate(session, seeds)
    next(steps)
    assert len(session._ready) <= PROPAGATION_READY_TILES
    steps.close()  # a cancelled propagation
    for z in range(8):
        session.tile_predictor((z,), whole)
    assert len(session._ready) == 8
    with pytest.raises(ValueError, match="at least one"):
        with session.ready_at_most(0):
            pass
    # two at once, lifted in the other order (two threads): the lower holds until both end
    first, second = session.ready_at_most(2), session.ready_at_most(5)
    first.__enter__()
    second.__enter__()
    assert len(session._ready) == 2
    first.__exit__(None, None, None)
    for z in range(8):
        session.tile_predictor((z,), whole)
    assert len(session._ready) == 5
    second.__exit__(None, None, None)
    for z in range(8):
        session.tile_predictor((z,), whole)
    assert len(session._ready) == 8


def test_tiles_dropped_by_a_lower_limit_are_given_back_to_the_system(monkeypatch):
    """The dropped tiles were freed in the encoding thread's malloc arena, which the bulk work's
    thread does not allocate from: ``ready_at_most`` trims when it dropped some, not otherwise."""
    from napari_sam_hq.engine.volumes import session as session_module

    trims = []
    monkeypatch.setattr(session_module.memory, "trim", lambda: trims.append(1))
    image = np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8)  # 6 distinct planes
    session = SegmentationSession(FakeModel(), image, store=EmbeddingStore(None, max_in_memory=64),
                                  predictor_factory=FakePredictor, max_ready=8)
    whole = session.grid.tiles[0]
    with session.ready_at_most(2):  # nothing ready: nothing to give back
        pass
    assert trims == []
    for z in range(4):
        session.tile_predictor((z,), whole)  # (each encode trims too)
    trims.clear()
    with session.ready_at_most(2):
        assert len(session._ready) == 2
    assert trims == [1]
    trims.clear()
    with session.ready_at_most(2):  # two ready, none dropped
        pass
    assert trims == []


def _spy(session):
    """Record ``(slice, objects)`` of every decode."""
    calls = []
    segment = session.segment

    def spy(key, objects, **kw):
        calls.append((key[0], [dict(o) for o in objects]))
        return segment(key, objects, **kw)

    session.segment = spy
    return calls


def test_a_fill_meets_in_the_middle_prompted_from_both_neighbours():
    """Seeds on slices 5 and 15: 6-9 from below, 14-11 from above, each slice decoded once,
    and slice 10 last, with a point from each neighbour's mask and the box around both."""
    image, truth = ellipsoid_volume((22, 128, 128), (((10, 64, 64), (10, 40, 30)),), seed=7)
    session = _session(image)
    calls = _spy(session)
    seeds = seeds_from_labels(truth, slices={1: {5, 15}})
    found = exhaust(iter_propagate(session, seeds, outward=False,
                                   settings=PropagationSettings(prompt="box+point")))
    visited = [z for z, _ in calls]
    assert sorted(visited) == list(range(6, 15)) and visited[-1] == 10  # once each, the middle last
    [middle] = calls[-1][1]
    assert middle["point_coords"].shape == (2, 2)  # one point from slice 9's mask, one from 11's
    below, above = (prompt_from_mask(found[z][1].mask)["box"] for z in (9, 11))
    assert middle["box"].tolist() == [*np.minimum(below[:2], above[:2]), *np.maximum(below[2:], above[2:])]
    assert set(found) == set(range(6, 15)) and all(list(v) == [1] for v in found.values())  # the id is kept
    labels = paint_seeds(truth.shape, seeds, truth.dtype)
    for z, plane in write_propagation(labels, found).items():
        labels[z] = plane
    assert _dice(labels[5:16] == 1, truth[5:16] == 1) > 0.95
    assert not labels[:5].any() and not labels[16:].any()  # outward off: nothing beyond the seeds


@pytest.mark.parametrize("prompt", ["point", "points", "box", "box+point", "point+mask", "box+point+mask",
                                    "points+mask", "box+mask"])
def test_every_prompt_kind_follows_the_object_with_the_prompts_it_names(prompt):
    image, truth = ellipsoid_volume((20, 96, 110), (((10, 48, 55), (7, 30, 36)),), seed=8)
    session = _session(image)
    calls = _spy(session)
    found = exhaust(iter_propagate(session, seeds_from_labels(truth, slices={1: {10}}),
                                   settings=PropagationSettings(prompt=prompt)))
    parts = set(prompt.split("+"))
    for z, (obj,) in calls:
        assert ("box" in obj) == ("box" in parts)
        assert ("point_coords" in obj) == bool(parts & {"point", "points"})
        if "points" in parts:
            assert len(obj["point_coords"]) == 3
        if "mask" in parts and abs(z - 10) > 1:  # from the second step on, the previous answer's logits
            assert "mask_input" in obj
        if "mask" not in parts:
            assert "mask_input" not in obj
    labels = paint_seeds(truth.shape, seeds_from_labels(truth, slices={1: {10}}), truth.dtype)
    for z, plane in write_propagation(labels, found).items():
        labels[z] = plane
    assert _dice(labels == 1, truth == 1) > 0.9


def test_prompt_kinds_are_checked():
    with pytest.raises(ValueError, match="a mask alone does not say where"):
        PropagationSettings(prompt="mask")
    with pytest.raises(ValueError, match="prompt must be parts of"):
        PropagationSettings(prompt="box+circle")
    assert PropagationSettings().prompt == "point"  # micro-sam's measured best (docs/volumes.md)


def test_a_stop_point_ends_the_object_before_that_slice():
    """A negative point on slice 16, inside the object: propagation up from 10 stops there
    (16 and beyond are not written); downwards it goes on to the object's end."""
    image, truth = ellipsoid_volume((26, 96, 96), (((12, 48, 48), (11, 30, 30)),), seed=9)
    seeds = seeds_from_labels(truth, slices={1: {10}})
    free = exhaust(iter_propagate(_session(image), seeds))
    stopped = exhaust(iter_propagate(_session(image), seeds, stops={16: [(48.0, 48.0)]}))
    assert max(free) > 17 and max(stopped) == 15
    assert min(stopped) == min(free)
    away = exhaust(iter_propagate(_session(image), seeds, stops={16: [(5.0, 5.0)]}))  # outside: no stop
    assert sorted(away) == sorted(free)

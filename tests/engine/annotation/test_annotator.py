"""The Qt-free annotator: the encoding queue (the tile under a prompt first), preview,
commit with a counter, correction, undo and redo, propagation, segment everything, any
viewing axis; on labels in RAM and on disk (a deterministic rule model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_hq.engine.annotation.annotator import Annotator, SlicePrompts
from napari_sam_hq.engine.annotation.labels import LabelVolume, open_labels_zarr
from napari_sam_hq.engine.volumes.propagation import PropagationSettings
from napari_sam_hq.engine.volumes.store import EmbeddingStore
from napari_sam_hq.model.steps import exhaust

from ..fake_predictor import FakeModel, FakePredictor, disc_image, ellipsoid_volume


def _annotator(data, labels=None, *, tile_size=1024, overlap=256, model=None, **kw) -> Annotator:
    model = model or FakeModel()
    shape = data.shape[:-1] if kw.get("rgb") else data.shape
    labels = labels if labels is not None else LabelVolume(np.zeros(shape, np.uint32))
    return Annotator(
        data, model=model, store=EmbeddingStore(None), labels=labels, tile_size=tile_size, overlap=overlap,
        predictor_factory=FakePredictor, **kw,
    )


def _drain(ann: Annotator) -> list:
    return [s for s in ann.iter_encode() if s.done]


def _point(x, y, label=1) -> SlicePrompts:
    return SlicePrompts(points=[(x, y)], labels=[label])


def _discs(shape, discs, seed=0):
    return disc_image(shape, discs, seed=seed, dtype=np.uint16, low=600, high=3000, noise=80)


def test_2d_prompt_commit_counter_undo_redo():
    image, truth = disc_image((120, 160), [(40, 50, 15), (80, 120, 18)])
    ann = _annotator(image)
    preview, errors = ann.decode({(): _point(50, 40)})
    assert not preview and not errors and ann.waiting == {()}  # nothing stored yet: queued, not blocked
    assert [s.key for s in _drain(ann)] == [()]
    preview, _ = ann.decode({(): _point(50, 40)})
    [obj] = preview[()]
    assert obj.points_only and not obj.pending and not ann.waiting
    (y0, x0), crop = ann.preview_crop(())
    assert crop.shape == (31, 31) and (y0, x0) == (25, 35)  # only the object's box, not the plane
    assert ann.commit() == [1]
    assert np.array_equal(ann.labels.array > 0, truth == 1)
    ann.decode({(): SlicePrompts(boxes=[(100, 60, 140, 100)])})
    assert ann.commit() == [2] and ann.labels.next_id() == 3
    assert ann.labels.scans == 1  # the counter: one scan of a fresh array, never per commit
    assert ann.undo() and set(np.unique(ann.labels.array)) == {0, 1}
    assert ann.redo() and set(np.unique(ann.labels.array)) == {0, 1, 2}
    assert ann.labels.seeds == {1: {()}, 2: {()}}


def test_existing_labels_are_never_overwritten_unless_asked_and_painting_moves_the_counter():
    image, truth = disc_image((100, 100), [(50, 50, 20)])
    mine = np.zeros((100, 100), np.uint32)
    mine[:, :50] = 7
    ann = _annotator(image, LabelVolume(mine))
    _drain_after(ann, {(): _point(50, 50)})
    [new] = ann.commit()
    assert new == 8 and (mine[:, :50] == 7).all() and (mine[truth == 1][:, None] > 0).all()
    # painting by hand (outside the annotator) with a large id: the counter follows
    mine[0:3, 90:93] = 40
    ann.labels.note_written(np.nonzero(mine == 40), 40)
    _drain_after(ann, {(): SlicePrompts(boxes=[(30, 30, 70, 70)])})
    assert ann.commit(overwrite=True) == [41]
    assert (mine[:, :50] == 7).sum() < 50 * 100 and (mine == 40).sum() == 9  # hand painting kept


def _drain_after(ann, prompts, **kw):
    ann.decode(prompts, **kw)
    _drain(ann)
    return ann.decode(prompts, **kw)[0]


def test_the_tile_under_the_prompt_is_encoded_first_and_a_cut_mask_is_redone():
    # a disc wider than the overlap: the tile under its centre cuts it, the coarse pass holds it
    image, truth = _discs((600, 900), [(190, 450, 150), (520, 80, 30)])
    ann = _annotator(image, tile_size=384, overlap=128)
    grid = ann.session.grid_tiles()
    assert len(grid) == 8
    ann.request([()], near=(80, 520))
    first = next(s for s in ann.iter_encode() if s.done)
    assert first.tile.contains((50, 490, 110, 550))  # the tile under the point, before the rest
    ann.cancel_encoding()
    encodes = ann.session.model.encodes
    prompts = {(): _point(450, 190)}
    assert ann.decode(prompts)[0] == {} and ann.waiting == {()}
    assert ann.pending == 1  # just the one tile
    _drain(ann)
    [cut] = ann.decode(prompts)[0][()]
    assert cut.pending and ann.waiting == {()} and ann.pending == 1  # shown at once, redone later
    assert cut.mask.any() and not cut.mask[:, :344].any()
    _drain(ann)
    [whole] = ann.decode(prompts)[0][()]
    assert not whole.pending and not ann.waiting
    inter, union = (whole.mask & (truth == 1)).sum(), (whole.mask | (truth == 1)).sum()
    assert inter / union > 0.9
    assert ann.session.model.encodes == encodes + 2  # one tile and the coarse pass, not the 8 tiles


def test_a_cut_mask_is_shown_first_then_redone_from_the_stored_tile_that_holds_it():
    """Every tile stored: ``iter_decode`` publishes the first tile's cut answer (what the widget
    draws at once), then the coarse tile's whole mask; an object that fits its tile is final
    in the first answer, and a decode where nothing is cut yields nothing."""
    image, truth = _discs((600, 900), [(190, 450, 150), (520, 80, 30)])
    ann = _annotator(image, tile_size=384, overlap=128)
    ann.request([()])
    ann.request([()], tiles=[ann.session.grid.coarse])
    _drain(ann)
    prompts = {(): SlicePrompts(points=[(450, 190), (80, 520)], labels=[1, 1], boxes=[(45, 485, 115, 555)])}
    rounds = ann.iter_decode(prompts)
    first = next(rounds)
    assert ann.preview == first and not ann.waiting  # published: the widget draws ann.preview
    small, cut = first[()]  # the box around the small disc, then the points outside any box
    assert not small.pending and cut.pending
    assert cut.mask.any() and not cut.mask[:, :344].any()  # cut at the tile's edge
    with pytest.raises(StopIteration) as done:
        next(rounds)
    preview, errors = done.value.value
    assert errors == {} and ann.preview == preview
    small_final, whole = preview[()]
    assert np.array_equal(small_final.mask, small.mask)
    assert not whole.pending and not ann.waiting and ann.pending == 0
    inter, union = (whole.mask & (truth == 1)).sum(), (whole.mask | (truth == 1)).sum()
    assert inter / union > 0.9
    # the same answer as the one-call decode; and nothing cut: no early answer
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(ann.decode(prompts)[0][()], preview[()], strict=True))
    assert list(ann.iter_decode({(): SlicePrompts(boxes=[(45, 485, 115, 555)])})) == []


def test_commit_on_two_slices_points_are_one_object_boxes_are_many():
    stack = np.stack([disc_image((64, 80), [(30, 40, 12)], seed=s)[0] for s in range(5)])
    ann = _annotator(stack)
    prompts = {(1,): _point(40, 30), (3,): _point(40, 30)}
    _drain_after(ann, prompts)
    ids = ann.commit()
    assert ids == [1] and [z for z in range(5) if ann.labels.array[z].any()] == [1, 3]
    assert ann.labels.seeds[1] == {((0, 1),), ((0, 3),)}
    _drain_after(ann, {(2,): SlicePrompts(boxes=[(20, 10, 60, 50), (0, 0, 10, 10)])})
    assert ann.commit(overwrite=True) == [2]  # the empty box wrote nothing and took no id


def test_propagate_correct_repropagate_in_ram_and_on_disk(tmp_path):
    image, truth = ellipsoid_volume((16, 96, 96), (((8, 48, 48), (6, 24, 20)),))
    for labels in (LabelVolume(np.zeros(image.shape, np.uint32)),
                   LabelVolume(open_labels_zarr(tmp_path / "l.zarr", image.shape))):
        ann = _annotator(image, labels)
        _drain_after(ann, {(8,): _point(48, 48)})
        [label] = ann.commit()
        seeds = ann.propagation_seeds((8,))
        assert list(seeds) == [label] and list(seeds[label]) == [8]
        gen = ann.iter_propagate((8,), seeds, PropagationSettings())
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            found = stop.value
        ann.apply_propagation((8,), found, seeds)
        got = np.asarray(labels.array[:]) == label
        inter, union = (got & (truth == 1)).sum(), (got | (truth == 1)).sum()
        assert inter / union > 0.9
        # the object's extent is what later reads look at
        ext = labels.extent(label)
        assert ext[0].start <= 3 and ext[0].stop >= 13
        # correct slice 12 to nothing but a small part, propagate again from both seeds
        before = np.asarray(labels.array[:]).copy()
        part = np.zeros((96, 96), bool)
        part[40:56, 40:56] = True
        ann.preview = {(12,): [_obj(part)]}
        assert ann.correct(label) == [(12,)]
        assert labels.seeds[label] == {((0, 8),), ((0, 12),)}
        seeds = ann.propagation_seeds((12,))
        assert sorted(seeds[label]) == [8, 12]
        ann.apply_propagation((12,), {}, seeds)  # nothing found: the old propagation is cleared
        now = np.asarray(labels.array[:])
        assert [z for z in range(16) if (now[z] == label).any()] == [8, 12]
        assert ann.undo() and ann.undo()  # re-propagation, then the correction
        np.testing.assert_array_equal(np.asarray(labels.array[:]), before)


def test_a_propagation_goes_in_front_of_the_encoding_queue():
    """While a propagation runs, the queue waits (held steps, nothing encoded) except for the
    tile a preview waits for; the planes kept read are let go as it starts; after it, or
    after it is stopped midway, the queue goes on."""
    import dask.array as da

    image, _ = ellipsoid_volume((16, 96, 96), (((8, 48, 48), (6, 24, 20)),))
    ann = _annotator(da.from_array(image, chunks=(1, 96, 96)))
    _drain_after(ann, {(8,): _point(48, 48)})
    ann.commit()
    seeds = ann.propagation_seeds((8,))
    assert ann._lookups  # lazy data: slice 8's plane is kept read
    ann.request([(1,), (2,)])
    run = ann.iter_propagate((8,), seeds, PropagationSettings())
    next(run)
    assert not ann._lookups
    model = ann.session.model
    encodes = model.encodes
    queue = ann.encode_next()
    held = [next(queue) for _ in range(2)]
    assert all(s.held and not s.done and s.key == (1,) for s in held)
    assert model.encodes == encodes and ann.pending == 2
    # a prompt on a slice not encoded yet: its tile goes at once
    assert ann.decode({(14,): _point(48, 48)})[0] == {} and ann.waiting == {(14,)}
    steps = list(queue)
    assert not any(s.held for s in steps) and steps[-1].done and steps[-1].key == (14,)
    assert model.encodes == encodes + 1 and ann.session.is_ready((14,))
    ann.decode({(14,): _point(48, 48)})
    assert not ann.waiting
    assert next(ann.encode_next()).held  # the rest waits again
    exhaust(run)
    assert [s.key for s in _drain(ann)] == [(1,), (2,)]
    # a propagation stopped midway lets the queue go as well
    ann.request([(3,)])
    run = ann.iter_propagate((8,), seeds, PropagationSettings())
    next(run)
    assert next(ann.encode_next()).held
    run.close()
    assert [s.key for s in _drain(ann)] == [(3,)]


def test_a_neighbours_tile_reads_its_own_chunks_and_the_slice_on_screen_its_plane():
    """A tile queued alone (a neighbour's tile in view) is read as its region of a lazy
    volume, and its plane is not kept; the slice on screen (all its tiles queued) is read
    once and kept for its other tiles and the previews; both store the same entries."""
    import dask.array as da

    stack = np.stack([_discs((640, 640), [(320, 320, 60)], seed=z)[0] for z in range(5)])
    reads: list[tuple] = []

    def chunk(block, block_info=None):
        reads.append(tuple(block_info[None]["chunk-location"]))
        return block

    lazy = da.from_array(stack, chunks=(1, 160, 160)).map_blocks(chunk, dtype=stack.dtype)  # 16 a plane
    ann = _annotator(lazy, tile_size=384, overlap=128, contrast_limits=(0, 4000))
    tiles = ann.session.grid_tiles()
    assert len(tiles) == 4
    ann.request([(1,), (3,)], tiles=tiles[:1])  # two neighbours, the tile in view
    ann.request([(2,)])  # the slice on screen, every tile
    done = _drain(ann)
    assert [s.key for s in done] == [(2,)] * 4 + [(1,), (3,)]
    by_slice = {z: {r[1:] for r in reads if r[0] == z} for z in (1, 2, 3)}
    assert len(by_slice[2]) == 16 and len([r for r in reads if r[0] == 2]) == 16  # its plane, once
    assert 0 < len(by_slice[1]) == len(by_slice[3]) <= 9 < 16  # the tile's chunks only
    assert list(ann._lookups) == [(ann.orientation, id(ann.session), (2,))]
    # the same store entries as read from the plane: a prompt there is answered, nothing encoded
    encodes = ann.session.model.encodes
    plane = ann.session.entry_lookup(np.asarray(stack[1]))
    assert ann.session.is_stored((1,), tiles[0], plane) and ann.session.is_stored((3,), tiles[0])
    preview, _ = ann.decode({(1,): _point(100, 100)})
    assert preview[(1,)] and ann.session.model.encodes == encodes


def test_a_propagation_gives_overlaps_to_the_higher_score_and_keeps_other_labels():
    from napari_sam_hq.engine.volumes.session import ObjectMask

    image, _ = ellipsoid_volume((4, 60, 60), (((2, 30, 30), (2, 10, 10)),))
    mine = np.zeros(image.shape, np.uint32)
    mine[1, 0:5, 0:60] = 9  # a label of the user's across the top rows
    ann = _annotator(image, LabelVolume(mine))
    a = np.zeros((60, 60), bool)
    a[0:30, 10:40] = True
    b = np.zeros((60, 60), bool)
    b[20:50, 20:50] = True
    tile = ann.session.grid.coarse

    def obj(mask, score):
        return ObjectMask(mask, score, np.zeros((256, 256), np.float32), tile).packed()

    ann.apply_propagation((2,), {1: {1: obj(a, 0.6), 2: obj(b, 0.9)}}, {1: {2: a}, 2: {2: b}})
    assert (mine[1][b] == 2).all()  # the higher score takes the overlap
    assert (mine[1][a & ~b & (np.arange(60)[:, None] >= 5)] == 1).all()
    assert (mine[1, 0:5] == 9).all()  # never written over without overwrite
    ann.apply_propagation((2,), {3: {1: obj(a, 0.6)}}, {1: {2: a}})  # one object: no overlap to track
    assert (mine[3][a] == 1).all() and not mine[3][~a].any()
    # overwriting: the user's label goes, the overlap still to the higher score
    ann.apply_propagation((2,), {1: {1: obj(a, 0.6), 2: obj(b, 0.9)}}, {1: {2: a}, 2: {2: b}}, overwrite=True)
    assert (mine[1][b] == 2).all() and (mine[1][a & ~b] == 1).all() and not (mine[1][a | b] == 9).any()


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def _obj(mask):
    from napari_sam_hq.engine.annotation.annotator import PreviewObject

    return PreviewObject(mask, 1.0, True)


def test_labels_on_disk_keep_their_counter_extents_and_seeds_across_reopen(tmp_path):
    image, _ = disc_image((80, 90), [(40, 45, 14)])
    stack = np.stack([image] * 3)
    path = tmp_path / "cells.labels.zarr"
    ann = _annotator(stack, LabelVolume(open_labels_zarr(path, stack.shape)))
    _drain_after(ann, {(1,): _point(45, 40)})
    assert ann.commit() == [1]
    reopened = LabelVolume(open_labels_zarr(path, stack.shape))
    assert reopened.next_id() == 2 and reopened.scans == 0
    assert reopened.seeds == {1: {((0, 1),)}} and reopened.extent(1)[0] == slice(1, 2)
    assert (np.asarray(reopened.array[1]) == 1).sum() == (np.asarray(ann.labels.array[1]) == 1).sum()
    with pytest.raises(ValueError, match="another image"):
        open_labels_zarr(path, (4, 80, 90))


def test_any_viewing_axis_segments_the_displayed_plane_and_writes_through_it():
    image, truth = ellipsoid_volume((40, 64, 72), (((20, 30, 36), (12, 10, 14)),))
    ann = _annotator(image)
    assert ann.set_orientation((0, 2))  # XZ planes: rows = Z, cols = X, slices along Y
    assert ann.lead_shape == (64,) and ann.plane_shape == (40, 72)
    _drain_after(ann, {(30,): _point(36, 20)})
    [obj] = ann.preview[(30,)]
    assert _iou(obj.mask, truth[:, 30, :] == 1) > 0.9  # the XZ section: 24 rows of Z, not 20 of Y
    [label] = ann.commit()
    assert np.array_equal(ann.labels.array[:, 30, :] == label, obj.mask)
    assert not ann.labels.array[:, 29, :].any()
    assert ann.labels.seeds[label] == {((1, 30),)}
    # back to YX: the embeddings of XZ stay stored, and the YX planes are their own
    encodes = ann.session.model.encodes
    assert ann.set_orientation((1, 2))
    _drain_after(ann, {(20,): _point(36, 30)})
    assert ann.session.model.encodes == encodes + 1
    ann.set_orientation((0, 2))
    _drain_after(ann, {(30,): _point(36, 20)})
    assert ann.session_for().model.encodes == encodes + 1  # XZ slice 30 found again


def test_segment_everything_objects_get_ids_after_the_counter():
    image, _ = disc_image((60, 60), [(20, 20, 8)])
    labels = np.zeros((60, 60), np.uint32)
    labels[0, 0] = 5
    ann = _annotator(image, LabelVolume(labels))
    found = np.zeros((60, 60), np.uint32)
    found[10:20, 10:20] = 1
    found[30:40, 30:40] = 2
    found[0, 0] = 1
    assert ann.add_objects((), found) == [6, 7]
    assert labels[0, 0] == 5 and (labels[10:20, 10:20] == 6).all()
    assert ann.undo() and set(np.unique(labels)) == {0, 5}


def test_bad_labels_are_refused_with_the_fix():
    image, _ = disc_image((30, 30), [(10, 10, 5)])
    with pytest.raises(ValueError, match="integers"):
        LabelVolume(np.zeros((30, 30), np.float32))
    ann = _annotator(image, LabelVolume(np.zeros((31, 30), np.uint32)))
    ann.preview = {(): [_obj(np.ones((30, 30), bool))]}
    with pytest.raises(ValueError, match="shape"):
        ann.commit()
    with pytest.raises(ValueError, match="label id above 0"):
        ann.correct(0)


def test_fill_between_two_annotated_slices_is_one_undo_step_and_keeps_the_rest():
    image, truth = ellipsoid_volume((24, 96, 96), (((12, 48, 48), (11, 24, 20)),))
    labels = LabelVolume(np.zeros(image.shape, np.uint32))
    ann = _annotator(image, labels)
    _drain_after(ann, {(4,): _point(48, 48)})
    assert ann.commit() == [1]
    _drain_after(ann, {(14,): _point(48, 48)})
    ann.correct(1)  # the same object, annotated on slice 14 too
    labels.paint((slice(20, 21), slice(40, 50), slice(40, 50)), np.ones((1, 10, 10), bool), 1)  # outside the fill
    with pytest.raises(ValueError, match="needs annotated slices around slice 2"):
        ann.fill_seeds((2,), 1)
    seeds, span = ann.fill_seeds((9,), 1)
    assert span == (4, 14) and sorted(seeds[1]) == [4, 14]
    before = np.asarray(labels.array[:]).copy()
    found = exhaust(ann.iter_propagate((9,), seeds, PropagationSettings(), outward=False))
    assert sorted(found) == list(range(5, 14))
    ann.apply_propagation((9,), found, seeds, within=span)
    now = np.asarray(labels.array[:])
    assert all((now[z] == 1).any() for z in range(4, 15))
    assert (now[20, 40:50, 40:50] == 1).all()  # outside the fill: kept
    assert ann.undo()
    np.testing.assert_array_equal(np.asarray(labels.array[:]), before)

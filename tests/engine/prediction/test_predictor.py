"""SamHQPredictor behaviour: inputs, errors, batching, embeddings, progress."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_sam_hq.engine import SamHQPredictor
from napari_sam_hq.model import build_sam_hq

from ...conftest import blob_image


@pytest.fixture(scope="module")
def predictor(request) -> SamHQPredictor:
    pair = request.getfixturevalue("small_pair")
    p = SamHQPredictor(pair.ours)
    p.set_image(blob_image(200, 300, seed=3))
    return p


def test_predict_before_set_image_says_so(small_pair):
    with pytest.raises(RuntimeError, match=r"call set_image\(image\)"):
        SamHQPredictor(small_pair.ours).predict(point_coords=[[1, 1]], point_labels=[1])


def test_shapes_and_types(predictor):
    single = predictor.predict(point_coords=[[150, 100]], point_labels=[1])
    assert single.masks.shape == (1, 200, 300) and single.masks.dtype == bool
    assert single.scores.shape == (1,) and single.low_res_logits.shape == (1, 256, 256)
    multi = predictor.predict(point_coords=[[150, 100]], point_labels=[1], multimask_output=True)
    assert multi.masks.shape == (3, 200, 300)
    assert (np.diff(multi.scores) <= 0).all()


def test_feeding_back_low_res_logits(predictor):
    first = predictor.predict(box=[50, 40, 250, 160])
    again = predictor.predict(point_coords=[[150, 100]], point_labels=[1], mask_input=first.low_res_logits)
    assert again.masks.shape == (1, 200, 300)


def test_batch_equals_one_by_one(predictor):
    boxes = np.array([[10, 10, 120, 90], [100, 50, 290, 190], [0, 0, 299, 199]], float)
    batch = predictor.predict_batch(boxes=boxes)
    assert len(batch) == 3 and batch.masks.shape == (3, 1, 200, 300)
    for i, box in enumerate(boxes):
        one = predictor.predict(box=box)
        np.testing.assert_allclose(batch[i].low_res_logits, one.low_res_logits, atol=1e-4)
        np.testing.assert_allclose(batch[i].scores, one.scores, atol=1e-5)


def test_batch_points_and_boxes_together(predictor):
    pts = np.array([[[50, 50], [60, 60]], [[200, 150], [10, 10]]], float)
    labels = np.array([[1, 1], [1, 0]])
    boxes = np.array([[10, 10, 120, 90], [100, 50, 290, 190]], float)
    out = predictor.predict_batch(point_coords=pts, point_labels=labels, boxes=boxes)
    assert out.masks.shape == (2, 1, 200, 300)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "at least one prompt"),
        (dict(point_coords=[[1, 1]]), "give both or neither"),
        (dict(point_coords=[[1, 1]], point_labels=[2]), "1 \\(foreground\\) or 0"),
        (dict(point_coords=[[1, 1]], point_labels=[1, 0]), "must be B x N"),
        (dict(point_coords=[[400, 10]], point_labels=[1]), r"x=400, y=10\) lies outside the 300 x 200 image"),
        (dict(point_coords=[[10, -3]], point_labels=[1]), "outside"),
        (dict(point_coords=[[np.nan, 3]], point_labels=[1]), "finite"),
        (dict(box=[100, 10, 50, 60]), "x0 <= x1"),
        (dict(box=[0, 0, 500, 100]), "box corner .* outside"),
        (dict(box=[1, 2, 3]), "B x 4"),
        (dict(mask_input=np.zeros((64, 64))), "256 x 256"),
    ],
)
def test_bad_prompts_get_clear_errors(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_batch_sizes_must_agree(predictor):
    with pytest.raises(ValueError, match="same number of objects"):
        predictor.predict_batch(boxes=np.zeros((2, 4)) + [0, 0, 5, 5], point_coords=np.ones((3, 1, 2)),
                                point_labels=np.ones((3, 1)))


def test_edge_pixels_are_inside(predictor):
    predictor.predict(point_coords=[[-0.5, 199.5]], point_labels=[1])
    predictor.predict(box=[0, 0, 299, 199])


@pytest.mark.parametrize("multimask", [False, True])
def test_windowed_masks_are_the_full_masks_inside_and_empty_outside(predictor, multimask):
    """Windows anywhere (inner, at a corner, past the image's edge, one pixel, the whole
    image): inside each, the masks of a batch without windows; outside, nothing."""
    from napari_sam_hq.model.mask_decoder import OUTSIDE_LOGIT

    boxes = np.array([[60, 40, 120, 90], [250, 150, 299, 199], [10, 120, 80, 190], [150, 100, 150, 100],
                      [0, 0, 299, 199]], float)
    windows = np.array([[40, 25, 140, 110], [230, 130, 320, 230], [0, 100, 95.4, 199], [150, 100, 150, 100],
                        [-0.5, -0.5, 299.5, 199.5]])
    full = predictor.predict_batch(boxes=boxes, multimask_output=multimask)
    win = predictor.predict_batch(boxes=boxes, multimask_output=multimask, windows=windows)
    np.testing.assert_allclose(win.scores, full.scores, atol=1e-6)
    for i, (x0, y0, x1, y1) in enumerate(windows):
        inside = np.zeros((200, 300), bool)
        rows = slice(max(0, int(np.ceil(y0))), int(np.floor(y1)) + 1)
        inside[rows, max(0, int(np.ceil(x0))) : int(np.floor(x1)) + 1] = True
        assert not win.masks[i][:, ~inside].any()
        differ = (win.masks[i][:, inside] != full.masks[i][:, inside]).mean()
        assert differ < 1e-4, f"window {i}: {differ:.2%} of its pixels differ"
        assert i == 3 or full.masks[i][:, inside].any()  # there is something to compare (not in one pixel)
    assert (win.low_res_logits[0] == OUTSIDE_LOGIT).mean() > 0.5  # most of the plane was never computed
    # the whole image: every low-res row it reads (the image is 683 of the 1024 input rows;
    # the padding below is never read, so never computed)
    np.testing.assert_allclose(win.low_res_logits[4][:, :171], full.low_res_logits[4][:, :171], atol=2e-4)
    assert (win.low_res_logits[4][:, 176:] == OUTSIDE_LOGIT).all()


@pytest.mark.parametrize(
    "windows, match",
    [(np.zeros((2, 4)), "one per object"), (np.array([[10, 10, 5, 20]]), "x0 <= x1"),
     (np.array([[0, 0, np.inf, 5]]), "B x 4"), (np.zeros((1, 3)), "B x 4")],
)
def test_bad_windows_get_clear_errors(predictor, windows, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict_batch(boxes=np.array([[10, 10, 50, 50]], float), windows=windows)


def test_embedding_round_trip_gives_identical_predictions(small_pair):
    a = SamHQPredictor(small_pair.ours)
    a.set_image(blob_image(150, 220, seed=5))
    emb = a.get_image_embedding()
    b = SamHQPredictor(small_pair.ours)
    b.set_image_embedding(emb)
    pa = a.predict(point_coords=[[100, 70]], point_labels=[1])
    pb = b.predict(point_coords=[[100, 70]], point_labels=[1])
    np.testing.assert_array_equal(pa.low_res_logits, pb.low_res_logits)
    assert b.original_size == (150, 220)
    half = a.get_image_embedding(dtype=np.float16)
    assert half.image_embedding.dtype == np.float16
    # the decoder-ready pair (what the store keeps) and the early feature alone agree
    for early, hq in ((False, True), (True, False)):
        c = SamHQPredictor(small_pair.ours)
        part = a.get_image_embedding(early=early, hq=hq)
        assert (part.early_feature is None) != early and (part.hq_features is None) != hq
        c.set_image_embedding(part)
        pc = c.predict(point_coords=[[100, 70]], point_labels=[1])
        np.testing.assert_allclose(pc.low_res_logits, pa.low_res_logits, atol=1e-4)
    with pytest.raises(ValueError, match="neither early_feature nor hq_features"):
        b.set_image_embedding(dataclasses.replace(emb, early_feature=None, hq_features=None))
    with pytest.raises(ValueError, match=r"hq_features has shape \(1, 32, 8, 8\)"):
        b.set_image_embedding(dataclasses.replace(emb, hq_features=np.zeros((1, 32, 8, 8), np.float32)))


def test_embedding_from_another_model_is_refused(small_pair, tiny_pair):
    a = SamHQPredictor(small_pair.ours)
    a.set_image(blob_image(50, 60))
    with pytest.raises(ValueError, match="computed by small_vit .* recompute it"):
        SamHQPredictor(tiny_pair.ours).set_image_embedding(a.get_image_embedding())


def test_iter_set_image_reports_progress_and_can_be_cancelled(small_pair):
    p = SamHQPredictor(small_pair.ours)
    fractions = list(p.iter_set_image(blob_image(64, 64)))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 3
    assert p.is_image_set
    gen = p.iter_set_image(blob_image(64, 64, seed=9))
    next(gen)
    gen.close()  # cancelled between blocks
    assert not p.is_image_set
    with pytest.raises(RuntimeError, match="no image is set"):
        p.predict(point_coords=[[1, 1]], point_labels=[1])


@pytest.mark.parametrize(
    "image",
    [
        blob_image(40, 50, channels=1).astype(np.uint16) * 200,
        blob_image(40, 50, channels=1).astype(np.float64) / 255 - 0.3,
        np.dstack([blob_image(40, 50, channels=1)] * 2),
        np.dstack([blob_image(40, 50)] + [np.full((40, 50), 255, np.uint8)]),
        np.full((40, 50), 7.0),
    ],
    ids=["uint16", "float", "two-channel", "rgba", "constant"],
)
def test_every_documented_image_kind_segments(small_pair, image):
    p = SamHQPredictor(small_pair.ours)
    p.set_image(image)
    assert p.predict(point_coords=[[25, 20]], point_labels=[1]).masks.shape == (1, 40, 50)


def test_grey_equals_its_rgb_copy(small_pair):
    grey = blob_image(60, 80, channels=1)
    a, b = SamHQPredictor(small_pair.ours), SamHQPredictor(small_pair.ours)
    a.set_image(grey)
    b.set_image(np.dstack([grey] * 3))
    np.testing.assert_array_equal(a.get_image_embedding().image_embedding, b.get_image_embedding().image_embedding)


def test_float16_weights_run_end_to_end():
    """Half precision is meant for GPUs; the code path must still be dtype-consistent."""
    import torch

    from napari_sam_hq.model.registry import ModelSpec, ViTSpec

    model = build_sam_hq(ModelSpec("t", ViTSpec(32, 2, 2, (1,)))).to(dtype=torch.bfloat16)
    p = SamHQPredictor(model)
    p.set_image(blob_image(64, 64))
    out = p.predict(point_coords=[[30, 30]], point_labels=[1], box=[5, 5, 60, 60])
    assert out.masks.shape == (1, 64, 64) and out.low_res_logits.dtype == np.float32


def test_a_batch_of_images_in_one_encoder_call_gives_each_ones_embedding(small_pair):
    from napari_sam_hq.engine import EmbeddingStore, SegmentationSession

    model = small_pair.ours
    images = [blob_image(96, 120, seed=1), blob_image(130, 70, seed=2), blob_image(96, 120, seed=3)]
    pred = SamHQPredictor(model)
    batch = pred.embed_batch(images, contrast_limits=[None, (0.0, 200.0), None])
    assert not pred.is_image_set  # the predictor's own image is untouched
    for image, lim, emb in zip(images, [None, (0.0, 200.0), None], batch, strict=True):
        pred.set_image(image, contrast_limits=lim)
        one = pred.get_image_embedding(early=False)
        assert emb.original_size == one.original_size and emb.input_size == one.input_size
        np.testing.assert_allclose(emb.image_embedding, one.image_embedding, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(emb.hq_features, one.hq_features, atol=2e-5, rtol=1e-4)
    # a session encodes a stack in batches (as on a GPU) into the same store entries
    stack = np.stack([blob_image(64, 80, seed=s, channels=1) for s in range(5)])
    stores = {}
    for n in (1, 2):
        session = SegmentationSession(model, stack, store=EmbeddingStore(None), embed_batch=n)
        steps = list(session.iter_embed())
        assert steps[-1][0] == 1.0 and session.embed_batch == n
        stores[n] = [session.store.get(session.model_id, e) for k in session.keys for _, e in session.entry_keys(k)]
    for a, b in zip(stores[1], stores[2], strict=True):
        np.testing.assert_allclose(a.image_embedding, b.image_embedding, atol=2e-5, rtol=1e-4)
    assert SegmentationSession(model, stack).embed_batch == 1  # the CPU default
    with pytest.raises(ValueError, match="embed_batch"):
        SegmentationSession(model, stack, embed_batch=0)


def _storages(*predictors) -> dict[int, int]:
    """The distinct tensor storages the predictors hold (pointer -> bytes)."""
    import torch

    out = {}

    def walk(v):
        if isinstance(v, torch.Tensor):
            out[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
        elif isinstance(v, tuple):
            for x in v:
                walk(x)

    for p in predictors:
        for v in vars(p).values():
            walk(v)
    return out


def test_predictors_of_one_model_share_the_positional_encoding(small_pair):
    import torch

    model = small_pair.ours
    a, b = SamHQPredictor(model), SamHQPredictor(model)
    image = blob_image(120, 90, seed=4)
    a.set_image(image)
    b.set_image(blob_image(120, 90, seed=5))
    with torch.inference_mode():
        fresh = model.prompt_encoder.get_dense_pe()
    assert a._dense_pe is b._dense_pe and torch.equal(a._dense_pe, fresh)
    assert a._image_tokens.key_pe.data_ptr() == b._image_tokens.key_pe.data_ptr() == a._dense_pe.data_ptr()
    assert torch.equal(a._image_tokens.key_pe, fresh.flatten(2).transpose(1, 2))
    alone, both = sum(_storages(a).values()), sum(_storages(a, b).values())
    assert both <= 2 * alone - fresh.nbytes, "the dense pe (and its rows, a view of it) is held once"
    # the same answers as a predictor with a pe of its own
    c = SamHQPredictor(model)
    c._dense_pe = fresh
    c.set_image(image)
    for kw in (dict(point_coords=[[40, 60]], point_labels=[1]), dict(box=[10, 20, 80, 100])):
        np.testing.assert_array_equal(a.predict(**kw).low_res_logits, c.predict(**kw).low_res_logits)


def test_a_ready_predictor_holds_its_embedding_once(small_pair):
    """The prepared image tokens are the embedding's own rows (the "no mask" prompt is added
    where they are used): a decoder-ready tile holds the embedding, the HQ features and the
    first block's projections, and nothing else (4 MB less of each of a session's tiles)."""
    import torch

    p = SamHQPredictor(small_pair.ours)
    p.set_image(blob_image(120, 90, seed=4), keep_early=False)  # as a session keeps its tiles
    tokens = p._image_tokens
    assert tokens.rows.untyped_storage().data_ptr() == p._embedding.untyped_storage().data_ptr()
    own = [p._embedding, p._hq, tokens.token_to_image_k, tokens.token_to_image_v, tokens.image_to_token_q,
           tokens.row_offset]
    assert sum(_storages(p).values()) == p._dense_pe.nbytes + sum(t.nbytes for t in own)
    # and a mask prompt (the tokens made again, from the embedding) and the stored embedding still work
    emb = p.get_image_embedding(early=False)
    assert emb.image_embedding.flags.c_contiguous
    with torch.inference_mode():
        assert torch.equal(torch.as_tensor(emb.image_embedding), p._embedding)
    first = p.predict(point_coords=[[40, 60]], point_labels=[1])
    again = p.predict(point_coords=[[40, 60]], point_labels=[1], mask_input=first.low_res_logits)
    assert again.masks.shape == first.masks.shape


def test_the_shared_encoding_follows_new_weights(small_pair):
    import torch

    model = small_pair.ours
    first = model.inference_pe()
    assert model.inference_pe() is first  # computed once
    gauss = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    saved = gauss.detach().clone()
    try:
        with torch.inference_mode():  # a load under inference mode: no version counter to see it
            gauss.mul_(2.0)
        again = model.inference_pe()
        assert again is not first and not torch.equal(again, first)
        with torch.inference_mode():
            assert torch.equal(again, model.prompt_encoder.get_dense_pe())
    finally:
        with torch.inference_mode():
            gauss.copy_(saved)
    assert torch.equal(model.inference_pe(), first)


def test_keep_early_false_drops_the_early_feature_only(small_pair):
    image = blob_image(100, 130, seed=6)
    kept, dropped = SamHQPredictor(small_pair.ours), SamHQPredictor(small_pair.ours)
    kept.set_image(image)
    dropped.set_image(image, keep_early=False)
    assert kept.get_image_embedding().early_feature is not None
    assert dropped.get_image_embedding(early=True).early_feature is None
    np.testing.assert_array_equal(dropped.get_image_embedding(early=False).hq_features,
                                  kept.get_image_embedding(early=False).hq_features)
    kw = dict(point_coords=[[60, 50]], point_labels=[1], multimask_output=True)
    np.testing.assert_array_equal(dropped.predict(**kw).low_res_logits, kept.predict(**kw).low_res_logits)
    assert sum(_storages(dropped).values()) < sum(_storages(kept).values())
    # a session's decoder-ready tiles keep none (it stores embeddings without it): encoded
    # in the background, or on demand
    from napari_sam_hq.engine import EmbeddingStore, SegmentationSession

    image = blob_image(64, 80, seed=2, channels=1)
    for background in (True, False):
        session = SegmentationSession(small_pair.ours, image, store=EmbeddingStore(None))
        tile = session.grid.tiles[0]
        if background:
            assert list(session.iter_embed_tile((), tile))[-1] == 1.0
        assert session.tile_predictor((), tile)._early is None

"""The instance head around its network: targets, the seeded watershed, AP50, tiles without cut
or doubled objects, the head file and its card, the refusal of a foreign head; training on
synthetic scenes with a known answer (the image branch learns; the encoder is random); the
three modes of segment everything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam_hq.engine import EmbeddingStore, SegmentationSession
from napari_sam_hq.engine.automatic.head_training import HeadTrainSettings, iter_head_samples, iter_train_head
from napari_sam_hq.engine.automatic.instances import (
    HeadCard,
    HeadError,
    average_precision,
    build_head,
    instance_targets,
    instances_from_maps,
    iter_ais,
    load_head,
    match_counts,
    save_head,
)
from napari_sam_hq.engine.automatic.modes import iter_segment_everything
from napari_sam_hq.model.steps import exhaust

from ..fake_predictor import FakeModel, FakePredictor, disc_image
from ..heads import RuleHead
from ..scenes import cell_scene


def _fake_session(image, **kw):
    return SegmentationSession(FakeModel(), image, store=EmbeddingStore(None, max_in_memory=64),
                               predictor_factory=FakePredictor, **kw)


def _best_ious(truth, pred):
    """For each true object, the best IoU of a predicted one."""
    out = []
    for t in range(1, int(truth.max()) + 1):
        m = truth == t
        ids, counts = np.unique(pred[m], return_counts=True)
        best = 0.0
        for i, c in zip(ids, counts, strict=True):
            if i:
                best = max(best, c / np.logical_or(m, pred == i).sum())
        out.append(best)
    return np.array(out)


# ---------------------------------------------------------------------------- maps and instances


def test_targets_of_a_disc_and_of_touching_objects():
    labels = np.zeros((40, 60), np.uint32)
    yy, xx = np.indices(labels.shape)
    labels[(yy - 20) ** 2 + (xx - 15) ** 2 <= 81] = 1
    labels[5:35, 30:45], labels[5:35, 45:58] = 2, 3  # two rectangles touching along x = 45
    t = instance_targets(labels)
    assert t.shape == (3, 40, 60) and t.dtype == np.float32
    assert np.array_equal(t[0] > 0, labels > 0)
    assert t[1][20, 15] == 1.0 and t[2][20, 15] == 1.0  # the disc's centre
    assert t[2][20, 6] < 0.2 and t[1][20, 6] < 0.1  # its edge
    assert t[2][20, 44] < 0.15 and t[2][20, 45] < 0.15  # the shared border is a boundary for both
    assert (t[:, labels == 0] == 0).all()


def test_the_watershed_gives_back_touching_cells_from_their_targets():
    _, truth = cell_scene((192, 192), seed=3)
    pred = instances_from_maps(instance_targets(truth))
    assert int(pred.max()) == int(truth.max()) >= 20
    ious = _best_ious(truth, pred)  # a pixel at a border may go to the smaller neighbour
    assert average_precision(truth, pred) == 1.0 and ious.min() > 0.9 and ious.mean() > 0.97


def test_average_precision_counts():
    truth = np.zeros((10, 30), np.uint32)
    truth[:, 0:10], truth[:, 10:20] = 1, 2
    pred = np.zeros_like(truth)
    pred[:, 0:9] = 5  # IoU 0.9 with 1
    pred[:, 12:14] = 7  # IoU 0.2 with 2: a false positive, and 2 is missed
    pred[:, 25:30] = 9  # a false positive
    assert match_counts(truth, pred) == (1, 2, 3)
    assert average_precision(truth, pred) == pytest.approx(1 / 4)
    assert average_precision(truth * 0, pred * 0) == 1.0


# ---------------------------------------------------------------------------- tiles


def test_tiles_are_stitched_without_cut_or_doubled_objects():
    """Discs on the seams of 256-pixel tiles (overlap 96): maps are blended before the watershed,
    so each disc is one object, whole."""
    discs = [(128, 256, 30), (200, 120, 25), (256, 300, 35), (60, 180, 20), (330, 60, 28), (300, 200, 22)]
    image, truth = disc_image((400, 420), discs, seed=2)
    session = _fake_session(image, tile_size=256, overlap=96)
    assert session.grid.tiled and len(session.grid_tiles()) > 1
    head = RuleHead()
    labels = exhaust(iter_ais(session, head, [()]))
    assert head.calls == len(session.grid_tiles())
    assert int(labels.max()) == len(discs)
    assert _best_ious(truth, labels).min() > 0.9


def test_without_blending_a_seam_cuts_an_object():
    """The control for the test above: segmenting each tile alone and pasting the results cuts
    the disc that lies across the seam (so the blending is what keeps it whole)."""
    image, truth = disc_image((256, 420), [(128, 180, 40)], seed=4)  # whole in the first tile, cut by the second
    session = _fake_session(image, tile_size=256, overlap=96)
    from napari_sam_hq.engine.automatic.instances import predict_maps
    from napari_sam_hq.engine.prediction.transforms import to_model_rgb

    pasted = np.zeros(truth.shape, np.uint32)
    lookup = session.entry_lookup(session.plane(()))
    for n, tile in enumerate(session.grid_tiles()):
        _, pixels, limits = lookup(tile)
        emb = session.tile_predictor((), tile, lookup).get_image_embedding(early=False)
        part = instances_from_maps(predict_maps(RuleHead(), to_model_rgb(pixels, contrast_limits=limits), emb))
        pasted[tile.slices] = np.where(part > 0, part + 100 * n, pasted[tile.slices])
    assert _best_ious(truth, pasted).min() < 0.9


# ---------------------------------------------------------------------------- the file


@pytest.fixture
def small_model(small_pair):
    model = small_pair.ours
    return model


def test_head_file_round_trip_and_card(tmp_path, small_model):
    head = build_head({"width": 8})
    card = HeadCard(small_model.name, small_model.checkpoint_id, dict(head.config), data={"classes": ["cells"]},
                    held_out={"ap50_after": 0.9})
    path, card_path = save_head(tmp_path / "cells.head.pth", head, card)
    assert card_path.name == "cells.head.pth.json" and '"ap50_after": 0.9' in card_path.read_text()
    loaded, read = load_head(path, model=small_model)
    assert read == card
    x = (torch.rand(1, 3, 64, 64), torch.rand(1, 256, 4, 4), torch.rand(1, 32, 16, 16))
    head.eval()
    torch.testing.assert_close(loaded(*x), head(*x))


def test_foreign_corrupt_and_wrong_files_are_refused_in_one_line(tmp_path, small_model, small_checkpoint):
    head = build_head({"width": 8})
    path, _ = save_head(tmp_path / "other.pth", head, HeadCard("vit_b", "abc123", dict(head.config)))
    with pytest.raises(HeadError, match="trained on the features of vit_b.*the model in use is") as err:
        load_head(path, model=small_model)
    assert "\n" not in str(err.value)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(HeadError, match="not a readable instance head"):
        load_head(bad)
    with pytest.raises(HeadError, match="not an instance head .* use it as --model"):
        load_head(small_checkpoint)
    with pytest.raises(HeadError, match="no instance head at"):
        load_head(tmp_path / "missing.pth")


def test_a_foreign_head_is_refused_by_a_session(tmp_path, small_model):
    head = build_head({"width": 8})
    path, _ = save_head(tmp_path / "h.pth", head, HeadCard("vit_b", "abc123", dict(head.config)))
    foreign, _ = load_head(path)
    session = SegmentationSession(small_model, cell_scene((64, 64))[0], store=EmbeddingStore(None))
    with pytest.raises(HeadError, match="vit_b"):
        exhaust(iter_segment_everything(session, [()], mode="ais", head=foreign))


# ---------------------------------------------------------------------------- training and ais


@pytest.fixture(scope="module")
def trained(small_pair):
    """A head trained for 250 steps (about a minute) on 5 synthetic scenes (1 held out), and 2 new scenes."""
    model = small_pair.ours
    scenes = [cell_scene((192, 192), seed=s) for s in range(7)]
    images = np.stack([i for i, _ in scenes])
    labels = np.stack([lab for _, lab in scenes])
    session = SegmentationSession(model, images[:5], store=EmbeddingStore(None, max_in_memory=64))
    samples = exhaust(iter_head_samples(session, labels[:5]))
    steps = []
    # the training's length in steps, not time: the result must not depend on the machine's speed
    gen = iter_train_head(model, samples, HeadTrainSettings(minutes=30, max_steps=250, eval_every=25, seed=0),
                          data={"classes": ["synthetic cells"]})
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    test = SegmentationSession(model, images[5:], store=EmbeddingStore(None, max_in_memory=64))
    return result, steps, test, labels[5:]


def test_training_learns_touching_cells_from_the_image(trained):
    result, steps, test, truth = trained
    assert result.ap50_before < 0.3 and result.ap50_after >= 0.9
    assert [s.step for s in steps] == list(range(1, len(steps) + 1))
    assert any(s.val_ap50 is not None for s in steps) and "\n" not in result.stopped and result.steps <= 250
    card = result.card
    assert card.held_out["images"] == 1 and card.held_out["ap50_after"] >= 0.9
    assert card.training["stopped"] == result.stopped and card.data["classes"] == ["synthetic cells"]
    labels = exhaust(iter_segment_everything(test, None, mode="ais", head=result.head))  # new scenes, a stack
    assert labels.shape == truth.shape
    for z in range(len(truth)):
        assert average_precision(truth[z], labels[z]) >= 0.9


def test_training_refuses_empty_labels_and_bad_settings(small_pair):
    model = small_pair.ours
    image = cell_scene((64, 64))[0]
    session = SegmentationSession(model, image, store=EmbeddingStore(None))
    samples = exhaust(iter_head_samples(session, np.zeros((64, 64), np.uint16)))
    assert samples == []
    with pytest.raises(ValueError, match="no objects to learn from"):
        exhaust(iter_train_head(model, samples))
    with pytest.raises(ValueError, match="minutes must be positive.*crop must be a multiple of 16"):
        HeadTrainSettings(minutes=0, crop=100)
    with pytest.raises(ValueError, match="the labels have shape"):
        exhaust(iter_head_samples(session, np.zeros((10, 10), np.uint16)))


# ---------------------------------------------------------------------------- apg


def test_apg_draws_the_heads_objects_with_the_decoders_boundaries():
    """A head whose objects fall 3 px short of the truth; the stand-in decoder segments the
    whole object under a prompt: apg has every object once, with the decoder's boundary."""
    discs = [(50, 60, 28), (60, 200, 22), (150, 100, 35), (170, 250, 18), (250, 60, 20), (240, 190, 30)]
    image, truth = disc_image((300, 300), discs, seed=5)
    session = _fake_session(image)
    ais = exhaust(iter_segment_everything(session, [()], mode="ais", head=RuleHead(erode=3)))
    apg = exhaust(iter_segment_everything(session, [()], mode="apg", head=RuleHead(erode=3)))
    assert int(apg.max()) == len(discs) and average_precision(truth, apg) == 1.0
    assert _best_ious(truth, apg).min() > 0.95 and _best_ious(truth, ais).max() < 0.9


def test_apg_merges_two_seeds_in_one_object():
    """The head's maps put a second, small seed at the edge of every disc: the watershed cuts
    each disc in two. The main part's prompt brings the whole disc back; the sliver's answer
    loses every pixel to it (painted best first, on free pixels only): one object per disc."""
    from napari_sam_hq.engine.automatic.prompted import apg_plane
    from napari_sam_hq.engine.automatic.settings import AutoSettings

    discs = [(60, 60, 30), (70, 190, 26), (180, 120, 34)]
    image, truth = disc_image((260, 260), discs, seed=7)
    maps = instance_targets(truth)
    for cy, cx, r in discs:
        maps[1][cy - 2 : cy + 3, cx + r - 9 : cx + r - 4] = 0.9  # a second seed near the right edge
        maps[2][cy - 2 : cy + 3, cx + r - 9 : cx + r - 4] = 0.6
    cut = instances_from_maps(maps)
    assert int(cut.max()) == 2 * len(discs)
    labels = exhaust(apg_plane(_fake_session(image), (), maps, AutoSettings()))
    assert int(labels.max()) == len(discs) and average_precision(truth, labels) == 1.0


def test_apg_keeps_the_heads_object_where_the_decoder_fails():
    """Touching discs form one bright component: the stand-in decoder answers with both, which
    disagrees with either prompting instance; the head's own instances stand in."""
    image, truth = disc_image((120, 160), [(60, 50, 25), (60, 98, 24)], seed=6)
    labels = np.zeros_like(truth)
    head = RuleHead()
    session = _fake_session(image)
    maps = exhaust(__import__("napari_sam_hq.engine.automatic.instances", fromlist=["x"]).iter_head_maps(
        session, (), head))
    from napari_sam_hq.engine.automatic.prompted import apg_plane
    from napari_sam_hq.engine.automatic.settings import AutoSettings

    maps[1] = np.where(truth > 0, instance_targets(truth)[1], 0)  # the head knows the two discs
    maps[2] = np.where(truth > 0, instance_targets(truth)[2], 0)
    labels = exhaust(apg_plane(session, (), maps, AutoSettings()))
    assert int(labels.max()) == 2 and average_precision(truth, labels) == 1.0


def test_apg_decodes_in_windows_and_a_mask_that_runs_past_its_window_is_not_taken():
    """A decoder that follows a bright bar wherever it goes, prompted by a head that saw only
    the bar's end: the answer reaches the window's edge, so the head's instance stands in
    (without the window, the whole 200-pixel bar would have been taken for that cell). The
    disc's answer lies well inside its window and is taken."""
    from napari_sam_hq.engine.automatic.prompted import apg_plane, head_prompts
    from napari_sam_hq.engine.automatic.settings import AutoSettings

    class Follower(FakePredictor):
        limit_to_box = False

    image, _ = disc_image((160, 300), [(110, 200, 25)], seed=3)
    image[30:50, 40:240] = 210  # the bar
    seen = np.zeros((160, 300), np.uint32)
    seen[28:52, 40:70] = 1  # the head's cell: the bar's left end
    yy, xx = np.indices(seen.shape)
    seen[(yy - 110) ** 2 + (xx - 200) ** 2 <= 22**2] = 2  # the disc, 3 pixels short
    maps = instance_targets(seen)
    [(prompt, _, _), _] = head_prompts(seen, maps[1])
    assert prompt["window"].tolist() == [21, 12, 88, 67]  # cols 40-69, rows 28-51, grown by half and 4
    predictors = []

    def factory(model):
        predictors.append(Follower(model))
        return predictors[-1]

    session = SegmentationSession(FakeModel(), image, store=EmbeddingStore(None), predictor_factory=factory)
    labels = exhaust(apg_plane(session, (), maps, AutoSettings(pred_iou_thresh=0.5)))
    assert predictors[0].windows_seen == 2
    assert np.array_equal(labels == labels[40, 50], seen == 1)  # the head's own cell, not the bar
    disc = labels == labels[110, 200]
    assert disc.sum() > (seen == 2).sum() + 100  # the decoder's disc (radius 25), not the head's (22)


def test_apg_and_ais_end_to_end_with_the_real_model(small_pair):
    model = small_pair.ours
    stack = np.stack([cell_scene((96, 112), seed=s)[0] for s in range(2)])
    session = SegmentationSession(model, stack, store=EmbeddingStore(None))
    head = build_head({"width": 8})
    for mode in ("ais", "apg"):
        steps = []
        gen = iter_segment_everything(session, None, mode=mode, head=head)
        try:
            while True:
                steps.append(next(gen))
        except StopIteration as stop:
            labels = stop.value
        assert labels.shape == (2, 96, 112) and labels.dtype == np.uint32
        assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0


def test_modes_are_checked():
    session = _fake_session(disc_image((64, 64), [(30, 30, 10)])[0])
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        exhaust(iter_segment_everything(session, [()], mode="fast"))
    with pytest.raises(ValueError, match="needs an instance head"):
        exhaust(iter_segment_everything(session, [()], mode="apg"))

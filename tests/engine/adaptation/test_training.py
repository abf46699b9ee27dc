"""Adapting the decoder on stored embeddings: what gets gradients, the training forward equals
the inference path, repeatable runs, nothing written by a stopped run, the saved checkpoint
loads strictly (ours and the official code) with the same logits, and a large held-out gain
on a teacher-student problem with a known answer (small seeded model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sam_hq.engine.adaptation.training import (
    FEATURE_PARTS,
    HQ_PARTS,
    TrainingImage,
    TrainSettings,
    apply_state,
    decoder_logits,
    iter_train,
    objects_from_labels,
    save_adapted,
    trainable_parameters,
)
from napari_sam_hq.engine.prediction.predictor import SamHQPredictor
from napari_sam_hq.model import load_model

from ...conftest import blob_image


@pytest.fixture(scope="module")
def model(small_checkpoint):
    return load_model(small_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def embeddings(model):
    pred = SamHQPredictor(model)
    out = []
    for seed in range(3):
        pred.set_image(blob_image(160, 200, seed=seed))
        out.append(pred.get_image_embedding(early=False))
    return out


def _exhaust(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("train", ["hq", "decoder"])
def test_gradients_reach_only_the_chosen_parameters(model, embeddings, train):
    params = trainable_parameters(model, train)
    names = {n.split(".")[1] for n in params}
    assert (names <= set(HQ_PARTS)) if train == "hq" else not (names & set(FEATURE_PARTS))
    if train == "hq":
        count = sum(p.numel() for p in params.values())
        assert names == set(HQ_PARTS) and count > 10_000
    for p in model.parameters():
        p.grad = None
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            sam, hq, _ = decoder_logits(model, embeddings[0], [{"box": np.array([20, 20, 90, 80.0])}])
            (hq.square().mean() + (sam[:, 0] + hq[:, 0]).square().mean()).backward()
        chosen = {id(p) for p in params.values()}
        reached = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        for name, p in model.named_parameters():
            if id(p) not in chosen:
                assert p.grad is None, name  # the encoder, the feature branches, (hq) the rest
        assert {n.split(".")[1] for n in reached} >= set(HQ_PARTS)
        if train == "decoder":
            assert any(".transformer." in n for n in reached)
    finally:
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None


def test_training_forward_gives_the_inference_logits(model, embeddings):
    pred = SamHQPredictor(model)
    pred.set_image_embedding(embeddings[1])
    box = np.array([30, 25, 120, 110.0])
    pts = np.array([[60.0, 50.0], [100.0, 30.0]])
    labels = np.array([1, 0])
    for prompt, kwargs in (
        ({"box": box}, {"boxes": box[None]}),
        ({"point_coords": pts, "point_labels": labels}, {"point_coords": pts[None], "point_labels": labels[None]}),
    ):
        ref = pred.predict_batch(**kwargs).low_res_logits[0, 0]
        with torch.no_grad():
            sam, hq, _ = decoder_logits(model, embeddings[1], [prompt])
        np.testing.assert_allclose((sam[0, 0] + hq[0, 0]).numpy(), ref, atol=2e-4, rtol=0)


def _teacher_data(model, embeddings, noise: float = 1.0, *, with_teacher: bool = False):
    """Objects made by a teacher whose HQ parts differ: the student can reach them exactly."""
    teacher = apply_state(model, {})
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in trainable_parameters(teacher, "hq").values():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=gen))
    pred = SamHQPredictor(teacher)
    rng = np.random.default_rng(3)
    images = []
    for i, emb in enumerate(embeddings):
        pred.set_image_embedding(emb)
        boxes = []
        for _ in range(6):
            x0, y0 = rng.uniform(0, 120), rng.uniform(0, 90)
            boxes.append(np.array([x0, y0, x0 + rng.uniform(30, 70), y0 + rng.uniform(30, 60)]))
        masks = pred.predict_batch(boxes=np.stack(boxes), hq_token_only=True).masks[:, 0]  # the HQ mask
        keep = [j for j in range(len(boxes)) if masks[j].sum() > 50]
        images.append(TrainingImage(emb, [masks[j] for j in keep], f"im{i}", [boxes[j] for j in keep]))
    return (images, teacher) if with_teacher else images


def test_teacher_student_gain_is_large(model, embeddings):
    images, teacher = _teacher_data(model, embeddings, with_teacher=True)
    # the teacher answered boxes: the student learns it from boxes
    settings = TrainSettings(epochs=6, steps_per_epoch=8, batch_objects=4, seed=1, lr=3e-3, patience=6,
                             prompts=("box",))
    result = _exhaust(iter_train(model, images, settings))
    # the ceiling: the teacher itself on the same held-out objects, at the decoder's 256 grid
    # (its masks are fine textures, so even the teacher does not reach 1 there)
    ceiling = _exhaust(iter_train(teacher, images, TrainSettings(epochs=1, steps_per_epoch=1, batch_objects=1,
                                                                 seed=1, lr=1e-12, prompts=("box",))))
    top = ceiling.iou_before_hq_only
    before, after = result.iou_before_hq_only, result.iou_after_hq_only
    print(f"held-out IoU of the HQ mask {before:.3f} -> {after:.3f} (teacher {top:.3f}) "
          f"in {result.seconds:.0f} s ({result.steps} steps)")
    assert top > before + 0.1  # a problem with room to learn
    assert after - before > 0.6 * (top - before)  # most of the possible gain
    for k, p in trainable_parameters(model, "hq").items():  # the model itself is never changed
        assert not torch.equal(p, result.state[k])


def test_the_same_seed_gives_the_same_weights(model, embeddings):
    images = _teacher_data(model, embeddings)
    settings = TrainSettings(epochs=1, steps_per_epoch=2, batch_objects=3, seed=5, patience=1)
    first, again = (_exhaust(iter_train(model, images, settings)) for _ in range(2))
    other = _exhaust(iter_train(model, images, TrainSettings(epochs=1, steps_per_epoch=2, batch_objects=3, seed=6,
                                                             patience=1)))
    for k, v in first.state.items():
        torch.testing.assert_close(again.state[k], v, rtol=0, atol=0)
    assert first.losses == again.losses and first.iou_after == again.iou_after
    assert other.losses != first.losses  # the seed matters


def test_a_stopped_run_writes_nothing_and_a_saved_one_loads_strictly(model, embeddings, small_checkpoint, tmp_path):
    images = [TrainingImage(e, objects_from_labels(_blobs(e.original_size, s))) for s, e in enumerate(embeddings)]
    settings = TrainSettings(epochs=2, steps_per_epoch=2, batch_objects=2, seed=0)
    gen = iter_train(model, images, settings)
    next(gen)
    gen.close()  # cancelled: nothing exists to save
    assert not list(tmp_path.iterdir())
    result = _exhaust(iter_train(model, images, settings))
    out, card = save_adapted(tmp_path / "adapted.pth", small_checkpoint, result, settings=settings,
                             data={"images": len(images)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted.json", "adapted.pth"]
    info = json.loads(card.read_text())
    assert info["trained"] == "hq" and info["held_out_mean_iou"]["after"] == result.iou_after
    assert info["base_checkpoint_sha256_16"] and "recommended_hq_token_only" in info
    adapted = load_model(out, device="cpu")
    # the image encoder is unchanged: the adapted model reuses every stored embedding
    assert adapted.checkpoint_id == model.checkpoint_id and adapted.file_id != model.file_id
    expected = apply_state(model, result.state)
    box = np.array([[20, 20, 100, 90.0]])
    for m in (adapted, expected):
        m.eval()
    a, b = SamHQPredictor(adapted), SamHQPredictor(expected)
    a.set_image_embedding(embeddings[0])
    b.set_image_embedding(embeddings[0])
    np.testing.assert_array_equal(a.predict_batch(boxes=box).low_res_logits, b.predict_batch(boxes=box).low_res_logits)
    # the official code loads it with strict=True
    from tests.oracles import official_vit

    sd = torch.load(out, map_location="cpu", weights_only=True)
    from tests.conftest import SMALL_VIT

    official = official_vit(embed_dim=SMALL_VIT.embed_dim, depth=SMALL_VIT.depth, num_heads=SMALL_VIT.num_heads,
                            global_attn_indexes=SMALL_VIT.global_attn_indexes)
    official.load_state_dict(sd, strict=True)
    # an encoder that changed is another embedding key
    sd["image_encoder.patch_embed.proj.weight"] = sd["image_encoder.patch_embed.proj.weight"] * 1.01
    torch.save(sd, tmp_path / "other.pth")
    assert load_model(tmp_path / "other.pth", device="cpu").checkpoint_id != model.checkpoint_id


def _blobs(shape, seed):
    labels = np.zeros(shape, np.int32)
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    for i in range(1, 5):
        cy, cx, r = rng.uniform(20, shape[0] - 20), rng.uniform(20, shape[1] - 20), rng.uniform(8, 18)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return labels


def test_bad_training_data_is_refused():
    with pytest.raises(ValueError, match="integers"):
        objects_from_labels(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="train must be"):
        TrainSettings(train="encoder")


def test_a_half_precision_model_is_adapted_in_float32(model, embeddings):
    """GPUs run the model in half precision (build.default_dtype): the trained copy of the
    decoder is float32 (Adam on half weights loses the updates), and applying the result
    gives a half-precision model again."""
    import copy

    half = copy.deepcopy(model).to(torch.bfloat16)  # a copy: the module's model stays float32
    images = [TrainingImage(e, objects_from_labels(_blobs(e.original_size, s))) for s, e in enumerate(embeddings)]
    result = _exhaust(iter_train(half, images, TrainSettings(epochs=1, steps_per_epoch=2, batch_objects=2,
                                                             prompts=("mask", "box"))))
    assert all(v.dtype == torch.float32 for v in result.state.values()) and np.isfinite(result.losses).all()
    adapted = apply_state(half, result.state)
    assert adapted.dtype == torch.bfloat16
    pred = SamHQPredictor(adapted)
    pred.set_image_embedding(embeddings[0])
    assert pred.predict(box=np.array([20, 20, 90, 80.0])).masks.shape == (1, *embeddings[0].original_size)


def test_a_time_budget_is_used_not_cut_short_by_epochs_and_the_reason_is_one_line(model, embeddings):
    """Given minutes, the run trains for them (epochs no longer cap it; a few stale epochs do
    not end it) unless the held-out IoU has not risen for 30% of the budget; it says why."""
    images = _teacher_data(model, embeddings)
    settings = TrainSettings(minutes=0.1, epochs=1, steps_per_epoch=2, batch_objects=2, patience=1, seed=3,
                             prompts=("box",))
    result = _exhaust(iter_train(model, images, settings))
    assert result.epochs > 1 and result.stopped and "\n" not in result.stopped
    if result.stopped.startswith("used its"):
        assert result.seconds >= 6.0
    else:
        assert result.stopped.startswith("held-out IoU stopped improving")
    by_epochs = _exhaust(iter_train(model, images, TrainSettings(epochs=2, steps_per_epoch=2, batch_objects=2,
                                                                 patience=1, prompts=("box",))))
    assert by_epochs.epochs == 2 and by_epochs.stopped.startswith("ran its 2 epochs")

"""Loading official and Hugging Face checkpoints: strict, size-detecting, with clear errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from napari_sam_hq.engine import SamHQPredictor
from napari_sam_hq.model import MODEL_SPECS, CheckpointError, build_sam_hq, load_model
from napari_sam_hq.model.checkpoints import detect_spec, hf_to_official, read_state_dict

from ..conftest import SMALL_VIT, blob_image
from ..oracles import import_official, official_model, official_vit

# Predicted IoU: float32 sums over 4096 image tokens; reduction order moves it ~1e-5.
SCORE_ATOL = 1e-4


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_every_official_size_has_our_exact_keys_and_shapes(name):
    """The official builder's state dict (on the meta device: no memory) is ours, key for key."""
    import_official()
    # The official TinyViT calls .item() while building (no meta tensors); it is small.
    device = "cpu" if name == "vit_tiny" else "meta"
    with torch.device(device):
        official = official_model(name).state_dict()
        ours = build_sam_hq(name).state_dict()
    assert list(official) == list(ours) or set(official) == set(ours)
    assert {k: tuple(v.shape) for k, v in official.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert detect_spec(official).name == name
    expected_keys = {"vit_b": 339, "vit_tiny": 464}
    if name in expected_keys:
        assert len(official) == expected_keys[name]


def test_official_pth_round_trip(tmp_path, tiny_pair):
    path = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(tiny_pair.state_dict, path)
    sd, content_id = read_state_dict(path)
    assert sd.keys() == tiny_pair.state_dict.keys()
    assert all(torch.equal(sd[k], v) for k, v in tiny_pair.state_dict.items())
    model = load_model(path, device="cpu")
    assert model.name == "vit_tiny"
    assert model.file_id == content_id and len(content_id) == 16 and len(model.checkpoint_id) == 16
    x = torch.rand(1, 3, 1024, 768) * 255
    with torch.inference_mode():
        for a, b in zip(model.encode(x), tiny_pair.ours.encode(x), strict=True):
            torch.testing.assert_close(a, b)


def test_size_is_detected_from_weights_not_the_file_name(tmp_path, small_pair):
    path = tmp_path / "sam_hq_vit_h.pth"  # misleading name
    torch.save(small_pair.state_dict, path)
    model = load_model(path, device="cpu")
    assert model.image_encoder.blocks[0].attn.qkv.in_features == SMALL_VIT.embed_dim
    assert detect_spec(small_pair.state_dict).encoder == SMALL_VIT


def test_wrapped_state_dict_is_unwrapped(tmp_path, small_pair):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": small_pair.state_dict}, path)
    assert load_model(path, device="cpu").name.startswith("vit_custom")


# ------------------------------------------------------------------ bad files


def test_missing_path_names_the_choices(tmp_path):
    with pytest.raises(CheckpointError, match="neither a model name .*vit_b"):
        load_model(tmp_path / "nothing.pth")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(path)


def test_truncated_checkpoint(tmp_path, small_pair):
    path = tmp_path / "sam_hq_small.pth"
    torch.save(small_pair.state_dict, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path)


class Payload:
    """Not a tensor: weights_only loading must refuse to unpickle this."""


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"image_encoder.x": Payload()}, f)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(path)


def test_a_list_of_tensors_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_model(path)


def test_plain_sam_checkpoint_is_named_as_such(tmp_path, small_pair):
    sam_only = {k: v for k, v in small_pair.state_dict.items() if not k.startswith(
        ("mask_decoder.hf_", "mask_decoder.compress_vit_feat", "mask_decoder.embedding_encoder",
         "mask_decoder.embedding_maskfeature"))}
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam_only, path)
    with pytest.raises(CheckpointError, match="SAM checkpoint, not SAM-HQ.*sam_hq_vit_b.pth"):
        load_model(path)


def test_decoder_only_checkpoint(tmp_path, small_pair):
    path = tmp_path / "epoch_11.pth"
    torch.save({k: v for k, v in small_pair.state_dict.items() if k.startswith("mask_decoder.")}, path)
    with pytest.raises(CheckpointError, match="only HQ decoder weights"):
        load_model(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path, small_pair):
    sd = dict(small_pair.state_dict)
    del sd["mask_decoder.hf_token.weight"]
    sd["mask_decoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert "missing keys: mask_decoder.hf_token.weight" in msg
    assert "unexpected keys: mask_decoder.extra_head.weight" in msg


def test_wrong_shapes_are_listed(tmp_path, small_pair):
    sd = dict(small_pair.state_dict)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "reshaped.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"wrong shape keys: mask_decoder.iou_token.weight: file \(1, 128\)"):
        load_model(path)


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="without config.json"):
        load_model(tmp_path)


def test_hf_folder_of_plain_sam(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam"}))
    with pytest.raises(CheckpointError, match="plain SAM, not SAM-HQ"):
        load_model(tmp_path)


def test_truncated_safetensors(tmp_path, hf_small):
    folder, _ = hf_small
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    data = (folder / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(broken)


# ------------------------------------------------------------------ Hugging Face format


@pytest.fixture(scope="module")
def hf_small(tmp_path_factory):
    pytest.importorskip("transformers")
    from ..hf_export import random_hf_model

    folder = tmp_path_factory.mktemp("hf") / "sam-hq-small"
    model = random_hf_model("small", seed=7, folder=folder)
    return folder, model


def test_hf_mapping_covers_every_key(hf_small):
    folder, hf = hf_small
    sd, _ = read_state_dict(folder)
    ours = build_sam_hq(detect_spec(sd))
    assert set(sd) == set(ours.state_dict())
    assert len(hf_to_official(hf.state_dict())) == len(ours.state_dict())


def test_hf_checkpoint_gives_transformers_embeddings_and_scores(hf_small):
    folder, hf = hf_small
    ours = load_model(folder, device="cpu")
    image = torch.as_tensor(blob_image(1024, 1024, seed=5)).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        emb, early, hq = ours.encode(image)
        hf_emb, hf_inter = hf.get_image_embeddings(ours.preprocess(image))
        torch.testing.assert_close(emb, hf_emb, atol=2e-4, rtol=0)
        torch.testing.assert_close(early, hf_inter[0], atol=2e-4, rtol=0)
        points = torch.tensor([[[[400.0, 300.0], [700.0, 650.0]]]])
        labels = torch.tensor([[[1, 0]]])
        out = hf(image_embeddings=hf_emb, intermediate_embeddings=hf_inter, input_points=points,
                 input_labels=labels, multimask_output=False)
        sparse, dense = ours.prompt_encoder((points[0], labels[0]), None, None)
        _, scores = ours.mask_decoder(emb, ours.prompt_encoder.get_dense_pe(), sparse, dense[:1], hq,
                                      multimask_output=False, hq_token_only=False)
    torch.testing.assert_close(scores, out.iou_scores[0], atol=SCORE_ATOL, rtol=0)


class _Transformers5xUpscalingInput(torch.nn.Module):
    """What transformers 4.54-5.x feeds its mask upscaling: the image tokens *before* the
    two-way transformer (embedding + dense prompt), with H and W swapped."""

    def __init__(self, transformer, pre_tokens):
        super().__init__()
        self.transformer, self.pre_tokens = transformer, pre_tokens

    def prepare_image(self, src, pe, dense=None):
        return self.transformer.prepare_image(src, pe, dense)

    def forward_prepared(self, image_tokens, tokens):
        hs, _ = self.transformer.forward_prepared(image_tokens, tokens)
        return hs, self.pre_tokens


def test_hf_masks_differ_from_official_only_by_the_transformers_bug(hf_small):
    """Every mask weight is mapped right: fed the tokens transformers' decoder (wrongly) uses,
    our decoder reproduces its masks; fed the right tokens, it equals the official code."""
    folder, hf = hf_small
    ours = load_model(folder, device="cpu")
    image = torch.as_tensor(blob_image(1024, 1024, seed=6)).permute(2, 0, 1)[None].float()
    points = torch.tensor([[[[500.0, 420.0]]]])
    labels = torch.tensor([[[1]]])
    with torch.inference_mode():
        emb, early, hq = ours.encode(image)
        hf_emb, hf_inter = hf.get_image_embeddings(ours.preprocess(image))
        out = hf(image_embeddings=hf_emb, intermediate_embeddings=hf_inter, input_points=points,
                 input_labels=labels, multimask_output=False)
        sparse, dense = ours.prompt_encoder((points[0], labels[0]), None, None)
        pe = ours.prompt_encoder.get_dense_pe()
        right, _ = ours.mask_decoder(emb, pe, sparse, dense[:1], hq, multimask_output=False, hq_token_only=False)
        pre = (emb + dense[:1]).transpose(2, 3).flatten(2).transpose(1, 2)  # B C H W -> B WH C
        decoder = ours.mask_decoder
        original = decoder.transformer
        decoder.transformer = _Transformers5xUpscalingInput(original, pre)
        try:
            buggy, _ = decoder(emb, pe, sparse, dense[:1], hq, multimask_output=False, hq_token_only=False)
        finally:
            decoder.transformer = original
    hf_masks = out.pred_masks[0, 0]
    torch.testing.assert_close(buggy[0], hf_masks, atol=2e-4, rtol=0)
    assert (right[0] - hf_masks).abs().max() > 1e-2  # the bug is real and visible

    # The official code on the same (mapped) weights agrees with ours.
    sd, _ = read_state_dict(folder)
    official = official_vit(embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3))
    official.load_state_dict(sd, strict=True)
    sah = import_official()
    img = blob_image(1024, 1024, seed=6)
    op = sah.SamPredictor(official)
    op.set_image(img)
    _, _, low = op.predict(np.array([[500.0, 420.0]]), np.array([1]), multimask_output=False)
    pred = SamHQPredictor(ours)
    pred.set_image(img)
    got = pred.predict(np.array([[500.0, 420.0]]), np.array([1]))
    np.testing.assert_allclose(got.low_res_logits, low, atol=2e-4, rtol=0)

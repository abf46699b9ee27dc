"""Image and prompt transforms: the official resize, the documented intensity rules, frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam_hq.engine.prediction.transforms import Frames, preprocess_shape, resize_longest_side, to_model_rgb

from ...conftest import blob_image, run_python
from ...oracles import import_official


@pytest.mark.parametrize("hw", [(512, 512), (300, 701), (1500, 333), (1024, 1024), (7, 5)])
def test_resize_is_the_official_one(hw):
    sah = import_official()
    img = blob_image(*hw, seed=1)
    official = sah.utils.transforms.ResizeLongestSide(1024)
    assert preprocess_shape(*hw) == official.get_preprocess_shape(*hw, 1024)
    assert np.array_equal(resize_longest_side(to_model_rgb(img)), official.apply_image(img))


def test_float_resize_keeps_precision_and_agrees_with_uint8():
    img = blob_image(300, 400, seed=2)
    as_uint8 = resize_longest_side(img).astype(np.float32)
    as_float = resize_longest_side(img.astype(np.float32))
    assert as_float.dtype == np.float32
    assert np.abs(as_float - as_uint8).max() < 1.0  # PIL's uint8 path rounds in fixed point


def test_grey_and_single_channel_become_rgb():
    grey = blob_image(20, 30, channels=1)
    rgb = to_model_rgb(grey)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], grey) and np.array_equal(rgb[..., 2], grey)
    assert np.array_equal(to_model_rgb(grey[..., None]), rgb)


def test_two_channels_are_red_and_green_and_alpha_is_dropped():
    two = np.stack([np.full((4, 4), 10, np.uint8), np.full((4, 4), 20, np.uint8)], axis=-1)
    assert to_model_rgb(two)[0, 0].tolist() == [10, 20, 0]
    rgba = np.dstack([np.full((4, 4, 3), 7, np.uint8), np.full((4, 4), 255, np.uint8)])
    assert to_model_rgb(rgba)[0, 0].tolist() == [7, 7, 7]


def test_uint16_is_stretched_from_min_to_max():
    img = np.array([[1000, 3000], [2000, 1000]], np.uint16)
    out = to_model_rgb(img)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], [[0, 255], [127.5, 0]])


def test_contrast_limits_are_what_the_user_sees():
    img = np.array([[0.0, 0.5], [1.0, 2.0]])
    out = to_model_rgb(img, contrast_limits=(0.5, 1.0))
    np.testing.assert_allclose(out[..., 1], [[0, 0], [255, 255]])
    with pytest.raises(ValueError, match="low <= high"):
        to_model_rgb(img, contrast_limits=(1.0, 0.0))


def test_nan_inf_and_constant_images():
    img = np.array([[np.nan, 1.0], [np.inf, 3.0]])
    out = to_model_rgb(img)[..., 0]
    np.testing.assert_allclose(out, [[0, 0], [0, 255]])
    assert not to_model_rgb(np.full((5, 5), 42.0)).any()
    assert not to_model_rgb(np.full((5, 5), np.nan)).any()


def test_bool_images_are_0_or_255():
    out = to_model_rgb(np.eye(3, dtype=bool))
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}


@pytest.mark.parametrize(
    "shape, match",
    [((5,), "not H x W"), ((3, 20, 30), "not H x W"), ((20, 30, 5), "not H x W"), ((0, 4), "empty")],
)
def test_bad_shapes_say_what_to_do(shape, match):
    with pytest.raises(ValueError, match=match):
        to_model_rgb(np.zeros(shape, np.uint8))


def test_channels_first_hint():
    with pytest.raises(ValueError, match="np.moveaxis"):
        to_model_rgb(np.zeros((3, 20, 30, 7)))


def test_frames_map_points_boxes_and_masks():
    frames = Frames.for_image(500, 1000)
    assert frames.input_size == (512, 1024)
    np.testing.assert_allclose(frames.coords_to_input([[100, 50]]), [[102.4, 51.2]])
    np.testing.assert_allclose(frames.boxes_to_input([[0, 0, 1000, 500]]), [[0, 0, 1024, 512]])
    logits = torch.zeros(2, 3, 256, 256)
    # The image fills the top 512 of the 1024 padded rows (128 low-res rows); mark the
    # top 64 low-res rows, i.e. the top half of the image (250 of 500 original rows).
    logits[..., :64, :] = 1.0
    full = frames.logits_to_original(logits)
    assert full.shape == (2, 3, 500, 1000)
    assert (full[..., :245, :] > 0.5).all() and (full[..., 255:, :] < 0.5).all()


def _official_postprocess(frames: Frames, low_res: torch.Tensor) -> torch.Tensor:
    """The official chain, written out: 256 -> 1024 bilinear, crop, bilinear to the original."""
    import torch.nn.functional as F

    up = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
    up = up[..., : frames.input_size[0], : frames.input_size[1]]
    if tuple(up.shape[-2:]) == frames.original_size:
        return up
    return F.interpolate(up, frames.original_size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("out_in", [(2000, 1024), (777, 661), (300, 439), (1203, 1024), (5, 205), (1024, 256)])
def test_bilinear_matrix_is_torch_interpolate_bit_for_bit(out_in):
    import torch.nn.functional as F

    from napari_sam_hq.engine.prediction.transforms import bilinear_matrix

    out, size = out_in
    eye = torch.eye(size)[None, None]  # each column of the identity is one input pixel
    ref = F.interpolate(eye, (out, size), mode="bilinear", align_corners=False)[0, 0].double().numpy()
    np.testing.assert_array_equal(bilinear_matrix(out, size).astype(np.float32), ref)


@pytest.mark.parametrize(
    "hw", [(1024, 1024), (777, 1203), (1500, 2000), (300, 700), (4000, 300), (64, 64), (1, 5)]
)
def test_logits_to_original_equals_the_official_chain(hw):
    frames = Frames.for_image(*hw)
    low = 8 * torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    ours = frames.logits_to_original(low)
    ref = _official_postprocess(frames, low)
    assert ours.shape == ref.shape == (2, 3, *hw)
    # float32 sums of up to 9 products in another order: rounding only
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=2e-5, rtol=0)
    sure = ref.abs() > 1e-3
    assert torch.equal((ours > 0)[sure], (ref > 0)[sure])


def test_logits_to_original_dense_path_equals_the_banded_one():
    """The path for GPUs (two dense products) gives the CPU path's result (both run on the CPU)."""
    frames = Frames.for_image(777, 1203)
    low = 8 * torch.randn(1, 2, 256, 256, generator=torch.Generator().manual_seed(1))
    banded = frames.logits_to_original(low, banded=True)
    dense = frames.logits_to_original(low, banded=False)
    np.testing.assert_allclose(banded.numpy(), dense.numpy(), atol=2e-5, rtol=0)
    for path in (True, False):
        masks = frames.masks_to_original(low, 0.5, banded=path)
        assert masks.dtype == torch.bool
        sure = (banded - 0.5).abs() > 1e-3
        assert torch.equal(masks[sure], (banded > 0.5)[sure])


def _low_res_cases() -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    dot = torch.full((256, 256), -5.0)
    dot[37, 201] = 3.0  # one low-res pixel: smaller than a block
    return {
        "cell": 12 - ((yy - 100) ** 2 + (xx - 130) ** 2).sqrt(),
        "large object": 90 - ((yy - 120) ** 2 + (xx - 110) ** 2).sqrt(),
        "dot": dot,
        "speckle": 8 * torch.randn(256, 256, generator=torch.Generator().manual_seed(2)),
        "empty": torch.full((256, 256), -1.0),
        "full": torch.full((256, 256), 1.0),
        "stripes": 4 * torch.sin(xx / 9) + 0.1 * yy - 12,
    }


@pytest.mark.parametrize("hw", [(1500, 2000), (777, 1203), (4000, 300), (64, 64), (1, 5)])
@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_masks_skip_decided_blocks_and_equal_the_thresholded_logits(hw, threshold):
    """The CPU masks path fills blocks whose low-res logits are all on one side of the
    threshold and computes the rest: the same masks as thresholding the full logits,
    for objects smaller than a block, larger than many, speckle and empty planes."""
    frames = Frames.for_image(*hw)
    cases = _low_res_cases()
    low = torch.stack(list(cases.values()))[None]  # 1 x cases x 256 x 256
    logits = frames.logits_to_original(low, banded=True)
    masks = frames.masks_to_original(low, threshold)
    sure = (logits - threshold).abs() > 1e-4
    for i, name in enumerate(cases):
        assert torch.equal(masks[0, i][sure[0, i]], (logits[0, i] > threshold)[sure[0, i]]), name
    assert not masks[0, 4].any() and masks[0, 5].all()
    if min(hw) >= 777:  # the dot survives the resize (it averages away on small images)
        assert masks[0, 2].any() and masks[0, 2].sum() < 30**2


def test_masks_of_a_cell_compute_a_few_blocks():
    """A cell on a 2048 x 2048 plane: most of the plane is decided from the low-res
    logits; the full-size products run for the blocks around its edge only."""
    from torch.profiler import ProfilerActivity, profile

    frames = Frames.for_image(2048, 2048)
    cases = _low_res_cases()

    def products(low: torch.Tensor) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            frames.masks_to_original(low[None, None], 0.0)
        return sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::matmul"))

    cell, speckle = products(cases["cell"]), products(cases["speckle"])
    assert 0 < cell < speckle / 4
    assert products(cases["empty"]) == products(cases["full"]) == 0


@pytest.mark.parametrize(
    "image, limits",
    [
        (blob_image(300, 701, seed=3, channels=1).astype(np.uint16) * 40, None),
        (blob_image(300, 701, seed=3, channels=1).astype(np.uint16) * 40, (100.0, 5000.0)),
        (blob_image(257, 190, seed=4, channels=1)[..., None].astype(np.int32) - 70, None),
        (np.where(np.eye(40, 60) > 0, np.nan, np.linspace(-1, 1, 2400).reshape(40, 60)), None),
        (blob_image(120, 80, seed=5, channels=1), None),  # uint8: the official RGB path
        (blob_image(120, 80, seed=5).astype(np.float32), (10.0, 200.0)),  # RGB
        (np.full((30, 20), 7.0), None),  # constant
        (np.full((30, 20), np.nan), None),  # nothing finite
        # +-inf, and float64 beyond float32's range (inf once in float32): the low limit
        (np.where(np.eye(90, 70) > 0, 1e300, np.linspace(-3, 9, 6300).reshape(90, 70)) * [1] * 70
         + np.where(np.arange(70) == 5, -np.inf, 0), None),
    ],
)
@pytest.mark.parametrize("band_rows", [None, 7])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # float64 beyond float32 is inf by design, silently
def test_model_image_is_the_plain_chain(image, limits, band_rows, monkeypatch):
    """``model_image`` (grey images scaled and resized as one channel, its limits found and
    its pixels scaled a band of rows at a time) gives the exact pixels of
    ``resize_longest_side(to_model_rgb(...))``."""
    from napari_sam_hq.engine.prediction import transforms
    from napari_sam_hq.engine.prediction.transforms import model_image

    if band_rows:
        monkeypatch.setattr(transforms, "_SCALE_BAND_BYTES", 4 * image.shape[1] * band_rows)

    plain = resize_longest_side(to_model_rgb(image, contrast_limits=limits)).astype(np.float32)
    out = model_image(image, contrast_limits=limits)
    assert out.dtype == np.float32 and out.shape == plain.shape
    assert np.array_equal(out, plain)


def test_model_image_of_a_large_grey_plane_needs_one_float_plane():
    """Peak of the encoder input of a 2048 x 2048 uint16 plane (numpy allocations, tracemalloc,
    in a fresh process): one float32 plane (16 MB, and the copy PIL takes of it) and the small
    RGB result; the plain chain makes RGB float temporaries (72 MB measured; PIL's own buffers,
    three planes there, are not counted)."""
    code = (
        "import tracemalloc, numpy as np\n"
        "from napari_sam_hq.engine.prediction.transforms import model_image, resize_longest_side, to_model_rgb\n"
        "img = (np.arange(2048 * 2048, dtype=np.uint32) % 60000).astype(np.uint16).reshape(2048, 2048)\n"
        "tracemalloc.start(); model_image(img); a = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()\n"
        "tracemalloc.start(); resize_longest_side(to_model_rgb(img)); b = tracemalloc.get_traced_memory()[1]\n"
        "print(a / 2**20, b / 2**20)\n"
    )
    out = run_python(code)
    ours, plain = (float(v) for v in out.split())
    assert ours < 36, f"model_image peaked at {ours:.0f} MB"
    assert plain > 2 * ours  # the measurement tells the two apart


def test_model_image_of_a_4096_grey_plane_holds_pil_s_float_image_only():
    """Resident set (VmHWM, a fresh process) over the encoder input of a 4096 x 4096 uint16
    plane, the coarse pass of a large volume: PIL's float image (64 MB), filled a band at a
    time, not a scaled float32 plane beside it (+68 MB measured; +132 MB before)."""
    code = (
        "import numpy as np\n"
        "from napari_sam_hq.engine.prediction.transforms import model_image\n"
        "def hwm():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024\n"
        "img = np.empty((4096, 4096), np.uint16)\n"
        "for r in range(0, 4096, 256):  # made without whole-plane temporaries, which would set the peak\n"
        "    img[r:r + 256] = (np.arange(r * 4096, (r + 256) * 4096) % 60000).reshape(256, 4096)\n"
        "model_image(img[:64, :64])  # PIL and numpy warmed up\n"
        "before = hwm(); model_image(img, contrast_limits=(100.0, 50000.0)); print(hwm() - before)\n"
    )
    out = run_python(code)
    assert float(out) < 96, f"model_image raised the peak by {float(out):.0f} MB"

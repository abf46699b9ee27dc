"""From a user's image and prompts to the model's frames, and masks back.

Frames:
- *original*: the image as given, ``(H, W)``; points are (x, y) pixels, boxes XYXY.
- *model input*: resized so the longest side is 1024 (``input_size = (h, w)``), then
  zero-padded to 1024 x 1024 at the bottom and right.
- *low-res*: the decoder's 256 x 256 logits, which cover the padded model input.

Intensity rules (``to_model_rgb``):
- ``uint8`` is used as it is (exactly the official path); ``bool`` becomes 0 / 255.
- Any other dtype is mapped linearly from ``contrast_limits`` (default: the minimum and
  maximum of the finite values, over all channels together so colours keep their
  balance) to 0-255, clipped. NaN and +-inf become the low limit. A constant image maps to 0.
- ``H x W`` and ``H x W x 1`` are grey, copied to R, G and B. ``H x W x 2`` is a
  two-colour image shown as red and green (blue black). ``H x W x 3`` is RGB.
  ``H x W x 4`` is RGBA; alpha is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

MODEL_SIZE = 1024
LOW_RES = 256


def preprocess_shape(h: int, w: int, long_side: int = MODEL_SIZE) -> tuple[int, int]:
    """``(h, w)`` of the model input for an ``(H, W)`` image (the official rounding)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _rgb_view(image: np.ndarray) -> np.ndarray:
    """``image`` as ``H x W x 3`` by the channel rules (module docstring); checks the shape."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        rgb = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] in (2, 3, 4):
        c = image.shape[-1]
        if c == 2:
            rgb = np.concatenate([image, np.zeros_like(image[..., :1])], axis=-1)
        else:
            rgb = image[..., :3]
    else:
        raise ValueError(
            f"an image of shape {image.shape} is not H x W or H x W x C with C in 1-4. For a "
            "stack, pass one slice (image[z]); for channels first, move them last "
            "(np.moveaxis(image, 0, -1))."
        )
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"the image is empty (shape {image.shape})")
    return rgb


# Bytes of float32 scaled at a time into the encoder's input of a grey plane (``model_image``).
_SCALE_BAND_BYTES = 4 * 2**20


def _check_real(data: np.ndarray) -> None:
    if not (np.issubdtype(data.dtype, np.number)) or np.iscomplexobj(data):
        raise ValueError(f"image dtype {data.dtype} is not a real number type")


def _limits(data: np.ndarray, contrast_limits: tuple[float, float] | None) -> tuple[float, float] | None:
    """The ``(low, high)`` that ``_scaled`` maps to 0-255: ``contrast_limits`` (checked), or the
    min and max of the finite values once in float32; ``None`` when no value is finite.
    Reads float data a band of rows at a time (its finite mask is never whole)."""
    if contrast_limits is not None:
        lo, hi = (float(v) for v in contrast_limits)
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ValueError(f"contrast_limits {contrast_limits} must be finite with low <= high")
        return lo, hi
    if np.issubdtype(data.dtype, np.integer):  # float32 rounding is monotonic: min and max commute
        return float(np.float32(data.min())), float(np.float32(data.max()))
    rows = max(1, _SCALE_BAND_BYTES // max(1, 4 * data[:1].size))
    lo = hi = None
    for r0 in range(0, data.shape[0], rows):
        with np.errstate(over="ignore"):  # values beyond float32 become inf: not finite, by design
            band = np.asarray(data[r0 : r0 + rows], np.float32)
        band = band[np.isfinite(band)]
        if band.size:
            lo = float(band.min()) if lo is None else min(lo, float(band.min()))
            hi = float(band.max()) if hi is None else max(hi, float(band.max()))
    return None if lo is None else (lo, hi)


def _scale_band(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``data`` (any part of an image) mapped from ``[lo, hi]`` (``hi > lo``) to float32 in
    [0, 255], clipped, non-finite values at ``lo``: a new float32 array."""
    with np.errstate(over="ignore"):  # beyond float32: inf, then the low limit as any non-finite value
        out = np.array(data, dtype=np.float32, copy=True)
    if not np.issubdtype(data.dtype, np.integer):
        out[~np.isfinite(out)] = lo
    out -= np.float32(lo)
    out *= np.float32(255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0, out=out)


def _scaled(data: np.ndarray, contrast_limits: tuple[float, float] | None) -> np.ndarray:
    """Real-valued ``data`` mapped from ``contrast_limits`` (default min-max of the finite
    values) to float32 in [0, 255], clipped; non-finite values become the low limit.

    Works in one float32 copy (never in ``data`` itself): a 4096 x 4096 plane costs 64 MB,
    not the ~5 temporaries of the same size that the plain expression makes."""
    _check_real(data)
    limits = _limits(data, contrast_limits)
    if limits is None or limits[1] <= limits[0]:
        return np.zeros(data.shape, np.float32)
    return _scale_band(data, *limits)


def to_model_rgb(
    image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None
) -> np.ndarray:
    """``H x W x 3`` RGB for the model: ``uint8`` for uint8 input, else float32 in [0, 255]."""
    rgb = _rgb_view(image)
    if rgb.dtype == np.uint8 and contrast_limits is None:
        return np.ascontiguousarray(rgb)
    if rgb.dtype == bool:
        return rgb.astype(np.uint8) * np.uint8(255)
    return _scaled(rgb, contrast_limits)


def model_image(
    image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None, long_side: int = MODEL_SIZE
) -> np.ndarray:
    """The encoder's input pixels ``h x w x 3`` float32 (longest side ``long_side``): the same
    values as ``resize_longest_side(to_model_rgb(image))``.

    A grey image (``H x W``, ``H x W x 1``) that is not plain uint8 is scaled and resized as
    one channel and copied to three at the model size: a 4096 x 4096 uint16 plane then needs
    one 64 MB float plane instead of ~600 MB of RGB temporaries (the coarse pass of a large
    plane, an untiled 2D image).
    """
    image = np.asarray(image)
    grey = image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1)
    if not grey or image.dtype in (np.uint8, np.bool_) or image.size == 0:
        return np.asarray(resize_longest_side(to_model_rgb(image, contrast_limits=contrast_limits), long_side),
                          np.float32)
    plane = image.reshape(image.shape[:2])
    _check_real(plane)
    limits = _limits(plane, contrast_limits)
    h, w = plane.shape
    # PIL's float image, filled a band at a time: the scaled plane is never held beside it
    # (64 MB less at 4096 x 4096); the same pixels as resizing the whole scaled plane
    canvas = Image.new("F", (w, h))  # zeros: the answer where nothing is finite or constant
    if limits is not None and limits[1] > limits[0]:
        rows = max(1, _SCALE_BAND_BYTES // (4 * w))
        for r0 in range(0, h, rows):
            canvas.paste(Image.fromarray(_scale_band(plane[r0 : r0 + rows], *limits), mode="F"), (0, r0))
    out_h, out_w = preprocess_shape(h, w, long_side)
    small = np.asarray(canvas.resize((out_w, out_h), Image.BILINEAR))
    return np.repeat(small[..., None], 3, axis=-1)


def resize_longest_side(rgb: np.ndarray, long_side: int = MODEL_SIZE) -> np.ndarray:
    """PIL bilinear resize (antialiased when shrinking), as the official preprocessing.

    ``uint8`` goes through PIL's RGB path (bit-identical to the official code); float
    input is resized per channel in PIL's 32-bit float mode, keeping its precision.
    """
    h, w = preprocess_shape(rgb.shape[0], rgb.shape[1], long_side)
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c]), mode="F").resize((w, h), Image.BILINEAR))
        for c in range(rgb.shape[-1])
    ]
    return np.stack(channels, axis=-1)


@dataclass(frozen=True)
class Frames:
    """Sizes that relate the original image to the model input."""

    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (h, w), longest side 1024

    @classmethod
    def for_image(cls, h: int, w: int) -> Frames:
        return cls((h, w), preprocess_shape(h, w))

    @property
    def scale_xy(self) -> np.ndarray:
        """(sx, sy) from original pixels to model-input pixels."""
        (oh, ow), (ih, iw) = self.original_size, self.input_size
        return np.array([iw / ow, ih / oh])

    def coords_to_input(self, coords: np.ndarray) -> np.ndarray:
        """``... x 2`` (x, y) original pixels -> model-input pixels (float64)."""
        return np.asarray(coords, dtype=np.float64) * self.scale_xy

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """``... x 4`` XYXY original pixels -> model-input pixels."""
        boxes = np.asarray(boxes, dtype=np.float64)
        return (boxes.reshape(*boxes.shape[:-1], 2, 2) * self.scale_xy).reshape(boxes.shape)

    def logits_to_original(self, low_res: torch.Tensor, *, banded: bool | None = None) -> torch.Tensor:
        """``B x M x 256 x 256`` logits -> ``B x M x H x W`` logits in the original frame.

        The official postprocessing is 256 -> 1024 bilinear, crop the padding, bilinear to
        the original size (``align_corners=False``, no antialiasing). Each step is linear
        and acts on one axis at a time, so the chain is one matrix per axis,
        ``out = A_y @ logits @ A_x.T`` (``A_y`` H x 256, ``A_x`` W x 256), equal to the
        official result up to float rounding, with no 1024 x 1024 intermediate. Both
        matrices are banded (an output pixel mixes at most 3 neighbouring low-res pixels
        per axis): on the CPU they are applied a band of 64 output rows or columns at a
        time, from the ~18 low-res rows that band needs (~14x fewer FLOPs than dense); on
        other devices as two dense products (fewer, larger kernels). ``banded`` overrides
        that choice (tests run both paths on the CPU).
        """
        return self._to_original(low_res, banded)

    def window_pixels(self, windows: np.ndarray) -> np.ndarray:
        """``B x 4`` XYXY windows (original pixels; a pixel is in when its centre is) ->
        ``B x 4`` (row0, row1, col0, col1) of the pixels inside, half-open, on the image."""
        windows = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
        h, w = self.original_size
        x0, x1 = np.ceil(windows[:, 0]).clip(0, w), np.floor(windows[:, 2]).clip(-1, w - 1) + 1
        y0, y1 = np.ceil(windows[:, 1]).clip(0, h), np.floor(windows[:, 3]).clip(-1, h - 1) + 1
        return np.stack([y0, np.maximum(y0, y1), x0, np.maximum(x0, x1)], axis=1).astype(np.int64)

    def window_cells(self, pixels: np.ndarray) -> np.ndarray:
        """``B x 4`` (row0, row1, col0, col1) original pixels (``window_pixels``) -> the
        cells of the 64 x 64 embedding grid whose low-res logits those pixels read
        (``B x 4``, half-open): the decoder's windows for them. Empty stays empty."""
        op = resize_operator(self.original_size, self.input_size)
        out = np.zeros((len(pixels), 4), np.int64)
        cell = LOW_RES // 64
        for i, (r0, r1, c0, c1) in enumerate(np.asarray(pixels, np.int64).tolist()):
            if r0 < r1 and c0 < c1:
                out[i] = (op.row_reach[r0, 0] // cell, op.row_reach[r1 - 1, 1] // cell + 1,
                          op.col_reach[c0, 0] // cell, op.col_reach[c1 - 1, 1] // cell + 1)
        return out

    def masks_to_original(
        self, low_res: torch.Tensor, threshold: float, *, banded: bool | None = None
    ) -> torch.Tensor:
        """``logits_to_original(low_res) > threshold`` as ``B x M x H x W`` bool, without the
        full-size float logits (a 12 MP mask is 48 MB of float32).

        On the CPU only the blocks of the output where the mask's edge can be are computed.
        Both matrices are non-negative with rows summing to 1, so an output pixel is a
        weighted mean of the low-res logits it reads: where all of a block's low-res logits
        are above the threshold, the whole block is True, where none is, False (blocks of
        64 x 64 output pixels; a cell-sized object on a 2048 x 2048 plane leaves a few of
        them to compute). The rest is computed a run of undecided blocks at a time and
        thresholded while in cache.
        """
        if not (low_res.device.type == "cpu" if banded is None else banded):
            return self._to_original(low_res, False) > threshold
        return self._masks_by_blocks(low_res, threshold)

    def _masks_by_blocks(self, low_res: torch.Tensor, threshold: float) -> torch.Tensor:
        op = resize_operator(self.original_size, self.input_size)
        x = low_res.reshape(-1, LOW_RES, LOW_RES)[:, : op.rows_used, : op.cols_used]
        ay, ax = op.matrices(x.device, x.dtype)
        row_idx, col_idx = op.block_index(x.device)
        h, w = self.original_size
        out = torch.empty(x.shape[0], h, w, dtype=torch.bool, device=x.device)
        xt = x.new_empty(w, op.rows_used)  # (x @ A_x.T).T for one plane: W x rows
        scratch = x.new_empty(_BAND_ROWS, w)
        for p in range(x.shape[0]):
            # per block (row band x column band): the min and max of the low-res logits it reads
            rows = x[p][row_idx]  # row bands x their low-res rows (padded by repeats) x cols
            block_min = rows.amin(1)[:, col_idx].amin(2)  # row bands x column bands
            block_max = rows.amax(1)[:, col_idx].amax(2)
            undecided = (block_max > threshold) & (block_min <= threshold)
            if undecided.float().mean() > 0.5:
                # a speckled mask (as random weights give): every band, as _to_original
                runs = [[(0, len(op.col_bands) - 1)]] * len(op.row_bands)
                above = [[False] * len(op.col_bands)] * len(op.row_bands)
            else:
                out[p] = False
                runs = [_runs(flags) for flags in undecided.tolist()]
                above = (block_min > threshold).tolist()
            used = sorted({k for band in runs for run in band for k in range(run[0], run[1] + 1)})
            for k in used:  # the column pass, for the column bands some undecided block needs
                c0, c1, lo, hi = op.col_bands[k]
                torch.matmul(ax[c0:c1, lo:hi], x[p, :, lo:hi].T, out=xt[c0:c1])
            for (r0, r1, lo, hi), flags, band_runs in zip(op.row_bands, above, runs, strict=True):
                for k0, k1 in _runs(flags):  # whole blocks above the threshold
                    out[p, r0:r1, op.col_bands[k0][0] : op.col_bands[k1][1]] = True
                for k0, k1 in band_runs:  # blocks the mask's edge may cross: computed
                    c0, c1 = op.col_bands[k0][0], op.col_bands[k1][1]
                    band = scratch[: r1 - r0, : c1 - c0]
                    torch.matmul(ay[r0:r1, lo:hi], xt[c0:c1, lo:hi].T, out=band)
                    torch.gt(band, threshold, out=out[p, r0:r1, c0:c1])
        return out.view(*low_res.shape[:-2], h, w)

    def _to_original(self, low_res: torch.Tensor, banded: bool | None) -> torch.Tensor:
        op = resize_operator(self.original_size, self.input_size)
        x = low_res.reshape(-1, LOW_RES, LOW_RES)[:, : op.rows_used, : op.cols_used]
        ay, ax = op.matrices(x.device, x.dtype)
        h, w = self.original_size
        if not (x.device.type == "cpu" if banded is None else banded):
            return (ay @ x @ ax.T).view(*low_res.shape[:-2], h, w)
        out = torch.empty(x.shape[0], h, w, dtype=x.dtype, device=x.device)
        xt = x.new_empty(w, op.rows_used)  # (x @ A_x.T).T for one plane: W x rows
        for p in range(x.shape[0]):
            for c0, c1, lo, hi in op.col_bands:
                torch.matmul(ax[c0:c1, lo:hi], x[p, :, lo:hi].T, out=xt[c0:c1])
            for r0, r1, lo, hi in op.row_bands:
                torch.matmul(ay[r0:r1, lo:hi], xt[:, lo:hi].T, out=out[p, r0:r1])
        return out.view(*low_res.shape[:-2], h, w)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """``out_size x in_size``: 1-D bilinear resampling as ``F.interpolate``
    (``mode="bilinear"``, ``align_corners=False``, no antialiasing) does along one axis.

    Output pixel ``i`` samples the input at ``(i + 0.5) * in/out - 0.5`` (clamped at 0),
    between input pixels ``floor`` and ``floor + 1`` (clamped at the last one). The
    position and weights are rounded to float32 as PyTorch's kernel rounds them (a float32
    scale, then one fused multiply-add), so the matrix reproduces its weights bit for bit
    (tested), not only its formula: a float64 position differs by up to 3e-5 in a weight,
    visible in logits of size 10.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    # fma(scale, i + 0.5, -0.5): the product of two float32 values is exact in float64
    centres = (np.arange(out_size, dtype=f32) + f32(0.5)).astype(np.float64)
    src = np.maximum((np.float64(scale) * centres - 0.5).astype(f32), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0.astype(f32), f32(0), f32(1))
    m = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), (f32(1) - lam).astype(np.float64))
    np.add.at(m, (rows, i1), lam.astype(np.float64))
    return m


def axis_map(original: int, model_input: int) -> np.ndarray:
    """``original x 256`` float64: low-res logits -> original pixels along one axis
    (256 -> 1024 bilinear, keep the first ``model_input`` rows, bilinear to ``original``)."""
    up = bilinear_matrix(MODEL_SIZE, LOW_RES)[:model_input]
    if original == model_input:  # the official code skips the resize; it would be the identity
        return up
    return bilinear_matrix(original, model_input) @ up


_BAND_ROWS = 64  # output rows per band on the CPU: ~16 low-res rows each, one small product


class ResizeOperator:
    """``Frames.logits_to_original`` as two matrices, for one (original, input) size pair.

    ``ay`` H x 256 and ``ax`` W x 256 (float64). ``rows_used`` / ``cols_used``: the
    low-res rows / columns that reach the original frame at all (the rest maps to the
    padding). ``row_bands`` (r0, r1, lo, hi): output rows ``r0:r1`` take only low-res rows
    ``lo:hi``; ``col_bands`` the same for columns.
    """

    def __init__(self, original_size: tuple[int, int], input_size: tuple[int, int]) -> None:
        self.ay = axis_map(original_size[0], input_size[0])
        self.ax = axis_map(original_size[1], input_size[1])
        self.rows_used = int(np.flatnonzero(self.ay.any(axis=0))[-1]) + 1
        self.cols_used = int(np.flatnonzero(self.ax.any(axis=0))[-1]) + 1
        self.ay, self.ax = self.ay[:, : self.rows_used], self.ax[:, : self.cols_used]
        self.row_bands, self.col_bands = _bands(self.ay), _bands(self.ax)
        # per output row / column: the first and last low-res row / column it reads
        self.row_reach, self.col_reach = _reach(self.ay), _reach(self.ax)
        self._tensors: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._blocks: dict[str, tuple[torch.Tensor, ...]] = {}

    def block_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``Frames.masks_to_original``'s blocks: the low-res rows each row band reads
        (``bands x longest``; short bands padded with their last row, which leaves a min or
        max unchanged), and the same for the column bands."""
        key = str(device)
        if key not in self._blocks:
            def index(bands):
                longest = max(hi - lo for _, _, lo, hi in bands)
                return torch.tensor([list(range(lo, hi)) + [hi - 1] * (longest - (hi - lo)) for _, _, lo, hi in bands],
                                    device=device)

            self._blocks[key] = (index(self.row_bands), index(self.col_bands))
        return self._blocks[key]

    def matrices(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``A_y`` and ``A_x`` as tensors, made once per device and dtype."""
        key = (str(device), dtype)
        if key not in self._tensors:
            self._tensors[key] = tuple(torch.as_tensor(m, dtype=dtype, device=device) for m in (self.ay, self.ax))
        return self._tensors[key]


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """The runs of True in ``flags`` as (first, last) index pairs, inclusive."""
    runs, start = [], None
    for k, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            runs.append((start, k - 1))
            start = None
    return runs


def _reach(m: np.ndarray) -> np.ndarray:
    """``N x 2``: for each row of ``m``, its first and last non-zero column."""
    nz = m != 0
    return np.stack([nz.argmax(axis=1), m.shape[1] - 1 - nz[:, ::-1].argmax(axis=1)], axis=1)


def _bands(m: np.ndarray) -> tuple[tuple[int, int, int, int], ...]:
    """(r0, r1, lo, hi) for each ``_BAND_ROWS`` rows of ``m``: the columns they touch."""
    bands = []
    for r0 in range(0, m.shape[0], _BAND_ROWS):
        r1 = min(m.shape[0], r0 + _BAND_ROWS)
        cols = np.flatnonzero(m[r0:r1].any(axis=0))
        bands.append((r0, r1, int(cols[0]), int(cols[-1]) + 1))
    return tuple(bands)


@lru_cache(maxsize=16)
def resize_operator(original_size: tuple[int, int], input_size: tuple[int, int]) -> ResizeOperator:
    """The ``ResizeOperator`` for an original ``(H, W)`` and model-input ``(h, w)``, made once."""
    return ResizeOperator(original_size, input_size)

"""Files in and out: images, napari's prompt CSVs, labels TIFFs and tables, written atomically.

Image layout rules (``read_image``):
- TIFF through tifffile (the first series), everything else through scikit-image.
- ``channel_axis`` + ``channel`` pick one channel of a multichannel image first.
- A last axis of size 3 or 4 is RGB(A) (``rgb=None`` decides so; ``rgb=False`` treats it as
  a plane axis); every axis before Y and X is a slicing axis (Z, T, ...).

Prompt CSVs are what napari writes when a Points or Shapes layer is saved (File > Save
Selected Layers > .csv): ``index, axis-0, ..., axis-(D-1)[, features]`` for points and
``index, shape-type, vertex-index, axis-0, ...`` for shapes. Coordinates are the layer's
data coordinates, i.e. image pixel indices (slices first, then row y, column x) when the
prompt layers share the image's frame, as the widget's do. A points ``label`` column says
positive/negative (``positive``/``negative``, ``1``/``0``, ``true``/``false``); without
it every point is positive. An optional ``object`` column groups points into objects.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

SliceKey = tuple[int, ...]

POSITIVE_WORDS = {"positive", "1", "1.0", "true", "yes", "fg", "foreground"}
NEGATIVE_WORDS = {"negative", "0", "0.0", "false", "no", "bg", "background"}


class InputError(ValueError):
    """An input file cannot be used; the message names the file and the fix."""


class UnreadableInput(InputError):
    """An input file is missing, empty or not in a format we read."""


@dataclass(frozen=True)
class LoadedImage:
    """An image as the engine takes it: ``data`` ``(*lead, H, W[, C])`` and whether it is RGB."""

    data: np.ndarray
    rgb: bool
    path: Path

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return self.data.shape[: self.data.ndim - (3 if self.rgb else 2)]

    @property
    def plane_shape(self) -> tuple[int, int]:
        n = len(self.lead_shape)
        return tuple(self.data.shape[n : n + 2])


def read_image(
    path: str | Path, *, channel_axis: int | None = None, channel: int | None = None, rgb: bool | None = None
) -> LoadedImage:
    """Read ``path`` into a ``LoadedImage`` (module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableInput(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            from skimage import io as skio

            data = skio.imread(path)
    except Exception as err:  # readers raise many types for unreadable files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UnreadableInput(f"{path}: cannot read it as an image ({reason})") from err
    data = np.asarray(data)
    if (channel_axis is None) != (channel is None):
        raise InputError("give --channel-axis and --channel together (which axis holds channels, which to use)")
    if channel_axis is not None:
        if not -data.ndim <= channel_axis < data.ndim or not 0 <= channel < data.shape[channel_axis]:
            raise InputError(
                f"{path}: shape {data.shape} has no channel {channel} on axis {channel_axis}"
            )
        data = np.take(data, channel, axis=channel_axis)
    if data.ndim < 2:
        raise InputError(f"{path}: shape {data.shape} is not an image (needs Y and X)")
    is_rgb = data.ndim >= 3 and data.shape[-1] in (3, 4) if rgb is None else bool(rgb)
    if is_rgb and (data.ndim < 3 or data.shape[-1] not in (3, 4)):
        raise InputError(f"{path}: shape {data.shape} has no RGB(A) last axis")
    return LoadedImage(data, is_rgb, path)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise UnreadableInput(f"{path}: cannot read it ({err})") from err
    if not rows:
        raise UnreadableInput(f"{path}: the file is empty")
    return [c.strip() for c in rows[0]], [r for r in rows[1:] if r]


def _axes(path: Path, header: list[str], ndim: int) -> list[int]:
    axes = [header.index(f"axis-{i}") for i in range(ndim) if f"axis-{i}" in header]
    if len(axes) != ndim or f"axis-{ndim}" in header:
        found = [c for c in header if c.startswith("axis-")]
        raise InputError(
            f"{path}: coordinates {found} do not match the image's {ndim} axes "
            f"(axis-0 .. axis-{ndim - 1}: slicing axes, then y, then x); save the prompts from a "
            "layer drawn on this image"
        )
    return axes


def read_points_csv(path: str | Path, ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Points of a napari points CSV: coordinates ``N x ndim`` (data order), labels ``N``
    (1 positive, 0 negative) and the ``object`` column if there is one."""
    path = Path(path)
    header, rows = _read_csv(path)
    axes = _axes(path, header, ndim)
    try:
        coords = np.array([[float(r[i]) for i in axes] for r in rows], float).reshape(-1, ndim)
    except (ValueError, IndexError) as err:
        raise InputError(f"{path}: a coordinate is not a number ({err})") from err
    labels = np.ones(len(rows), np.int64)
    if "label" in header:
        col = header.index("label")
        for i, r in enumerate(rows):
            word = r[col].strip().lower()
            if word in NEGATIVE_WORDS:
                labels[i] = 0
            elif word not in POSITIVE_WORDS:
                raise InputError(
                    f"{path}, row {i + 2}: label {r[col]!r} is neither positive nor negative "
                    "(use positive/negative or 1/0)"
                )
    objects = None
    if "object" in header:
        col = header.index("object")
        objects = np.array([r[col].strip() for r in rows])
    return coords, labels, objects


def read_boxes_csv(path: str | Path, ndim: int) -> np.ndarray:
    """Rectangles of a napari shapes CSV: ``B x 2 x ndim`` (min and max corner, data order).
    Other shape types are refused with the row they are on."""
    path = Path(path)
    header, rows = _read_csv(path)
    axes = _axes(path, header, ndim)
    if "index" not in header or "shape-type" not in header:
        raise InputError(f"{path}: not a napari shapes CSV (needs index and shape-type columns)")
    idx_col, type_col = header.index("index"), header.index("shape-type")
    shapes: dict[int, list[list[float]]] = {}
    for i, r in enumerate(rows):
        if r[type_col].strip() != "rectangle":
            raise InputError(f"{path}, row {i + 2}: a {r[type_col]} is not a box; only rectangles are prompts")
        try:
            shapes.setdefault(int(float(r[idx_col])), []).append([float(r[j]) for j in axes])
        except ValueError as err:
            raise InputError(f"{path}, row {i + 2}: {err}") from err
    boxes = [np.array(v) for _, v in sorted(shapes.items())]
    return np.stack([np.stack([b.min(axis=0), b.max(axis=0)]) for b in boxes]) if boxes else np.zeros((0, 2, ndim))


def prompts_by_slice(
    image: LoadedImage,
    points: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None,
    boxes: np.ndarray | None,
    source: str = "prompts",
) -> dict[SliceKey, list[dict]]:
    """Objects per slice, in engine (x, y) plane pixels.

    Rule (as in the widget): every box is an object, refined by the points inside it on
    its slice; with an ``object`` column, points form the objects it names; otherwise the
    points inside no box form one more object per slice. Prompts outside the image are an
    error that names them.
    """
    n = len(image.lead_shape)
    h, w = image.plane_shape
    out: dict[SliceKey, list[dict]] = {}

    def key_of(coord: np.ndarray) -> SliceKey:
        key = tuple(int(round(c)) for c in coord[:n])
        if any(not 0 <= k < s for k, s in zip(key, image.lead_shape, strict=True)):
            raise InputError(f"{source}: a prompt on slice {key} is outside the stack of {image.lead_shape} slices")
        return key

    pts_by_key: dict[SliceKey, list[tuple[float, float, int, str | None]]] = {}
    if points is not None:
        coords, labels, objects = points
        for i, c in enumerate(coords):
            y, x = float(c[n]), float(c[n + 1])
            if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
                raise InputError(
                    f"{source}: point {i} at (y={y:g}, x={x:g}) lies outside the {h} x {w} image: "
                    "were the prompts drawn on another image or with another scale?"
                )
            pts_by_key.setdefault(key_of(c), []).append((x, y, int(labels[i]), None if objects is None else objects[i]))
    box_by_key: dict[SliceKey, list[np.ndarray]] = {}
    if boxes is not None:
        for i, b in enumerate(boxes):
            key = key_of(b[0])
            (y0, x0), (y1, x1) = b[0][n:], b[1][n:]
            if x1 < -0.5 or y1 < -0.5 or x0 > w - 0.5 or y0 > h - 0.5:
                raise InputError(f"{source}: box {i} lies outside the {h} x {w} image")
            box_by_key.setdefault(key, []).append(
                np.array([max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)], float)
            )
    for key in sorted(set(pts_by_key) | set(box_by_key)):
        pts = pts_by_key.get(key, [])
        xy = np.array([(p[0], p[1]) for p in pts], float).reshape(-1, 2)
        lab = np.array([p[2] for p in pts], np.int64)
        used = np.zeros(len(pts), bool)
        objs: list[dict] = []
        for box in box_by_key.get(key, []):
            inside = (xy[:, 0] >= box[0]) & (xy[:, 0] <= box[2]) & (xy[:, 1] >= box[1]) & (xy[:, 1] <= box[3])
            used |= inside
            obj: dict = {"box": box}
            if inside.any():
                obj.update(point_coords=xy[inside], point_labels=lab[inside])
            objs.append(obj)
        rest = ~used
        groups = [p[3] for p in pts]
        if rest.any():
            names = [None]
            if any(g is not None for g in groups):
                names = sorted({g for g, r in zip(groups, rest, strict=True) if r})
            for name in names:
                sel = rest & np.array([g == name for g in groups]) if name is not None else rest
                if (lab[sel] == 1).any():
                    objs.append({"point_coords": xy[sel], "point_labels": lab[sel]})
        if objs:
            out[key] = objs
    return out


def labels_dtype(max_id: int) -> np.dtype:
    return np.dtype(np.uint16) if max_id < 2**16 else np.dtype(np.uint32)


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Labels as a TIFF, uint16 when the ids fit, else uint32 (atomically), grey planes: a
    stack of 3 or 4 slices would otherwise be written as one RGB(A) image (tifffile's
    default for that shape), which other readers show as colour."""
    import tifffile

    labels = np.asarray(labels)
    data = labels.astype(labels_dtype(int(labels.max()) if labels.size else 0))
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack"))


def write_table(path: str | Path, table) -> Path:
    """A pandas table as CSV (atomically)."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))

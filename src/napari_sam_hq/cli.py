"""``napari-sam-hq``: SAM-HQ without clicking. On top of ``engine``; no Qt, no napari.

    napari-sam-hq models
    napari-sam-hq embed IMAGE --model M [--tile N --overlap K] [--store PATH]
    napari-sam-hq segment IMAGE --model M [--points P.csv] [--boxes B.csv] --out labels.tif
    napari-sam-hq auto IMAGE --model M [--head HEAD.pth] [--mode ais|apg|amg] --out labels.tif
    napari-sam-hq measure LABELS [--image IMAGE] --out table.csv
    napari-sam-hq batch "GLOB" --model M (--prompts-dir DIR | --auto) --out-dir DIR
    napari-sam-hq train --images DIR --labels DIR --model M --out adapted.pth [--minutes N ...]
    napari-sam-hq train --head instances --images DIR --labels DIR --model M --out HEAD.pth [--minutes N]
    napari-sam-hq refine IMAGE LABELS --model M --out refined.tif [--table changes.csv ...]
    napari-sam-hq track MOVIE (--labels LABELS | --model M [--head H]) --out DIR [--force]

Exit codes: 0 done; 2 bad arguments; 3 an input file is missing or unreadable; 4 prompts
or labels that do not fit the image; 1 anything else. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INPUT, EXIT_MISMATCH = 0, 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Progress:
    """A one-line progress bar on stderr (only on a terminal, unless forced)."""

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = -1.0

    def __call__(self, fraction: float, message: str = "") -> None:
        if not self.enabled or (fraction - self._last < 0.01 and fraction < 1.0):
            return
        self._last = fraction
        bar = "#" * int(30 * fraction)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {100 * fraction:5.1f}% {message[:40]:<40}")
        if fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="vit_tiny, vit_b, vit_l, vit_h, or a .pth / .safetensors / HF folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the model runs (auto: a GPU when there is one)")


def _add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel-axis", type=int, help="axis that holds channels (with --channel); default: none")
    p.add_argument("--channel", type=int, help="the channel to segment (with --channel-axis); default: none")
    p.add_argument("--store", help="embedding store folder (default: the cache folder; 'none': RAM only)")
    p.add_argument("--tile", type=int, default=1024, help="tile size for large planes (px)")
    p.add_argument("--overlap", type=int, default=256, help="tile overlap (px)")


def _add_auto_options(p: argparse.ArgumentParser) -> None:
    from .engine.automatic.settings import AutoSettings  # torch-free: --help stays quick

    d = AutoSettings()
    g = p.add_argument_group("automatic segmentation")
    g.add_argument("--mode", choices=["ais", "apg", "amg"],
                   help="ais: the instance head alone (fastest); apg: the head's objects as SAM-HQ prompts; "
                        "amg: the point grid (default: ais with --head, else amg)")
    g.add_argument("--head", help="an instance head file (napari-sam-hq train --head instances); default: none")
    g.add_argument("--points-per-side", type=int, default=d.points_per_side, help="amg: grid points per side")
    g.add_argument("--points-per-batch", type=int, default=d.points_per_batch, help="prompts per decoder call")
    g.add_argument("--full-grid", action="store_true",
                   help="amg: decode every grid point (the official method) instead of coarse to fine")
    g.add_argument("--pred-iou-thresh", type=float, default=d.pred_iou_thresh,
                   help="drop masks whose predicted IoU is below this")
    g.add_argument("--stability-thresh", type=float, default=d.stability_score_thresh,
                   help="amg: drop masks less stable than this")
    g.add_argument("--nms-thresh", type=float, default=d.box_nms_thresh,
                   help="of two masks whose boxes overlap more than this (IoU), keep the better")
    g.add_argument("--crop-layers", type=int, default=d.crop_n_layers, help="amg: extra layers of zoomed-in crops")
    g.add_argument("--min-area", type=int, default=d.min_mask_region_area,
                   help="holes, islands and objects smaller than this (pixels) are removed")
    g.add_argument("--max-fraction", type=float, default=d.max_mask_fraction,
                   help="drop masks covering more of the plane than this (background)")


def _auto_settings(args):
    from .engine.automatic.settings import AutoSettings

    try:
        return AutoSettings(
            points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_thresh,
            box_nms_thresh=args.nms_thresh, crop_n_layers=args.crop_layers,
            min_mask_region_area=args.min_area, max_mask_fraction=args.max_fraction,
            coarse_to_fine=not args.full_grid,
        )
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from err


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none (required options,
    flags) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "default" in text
                or not action.option_strings or action.required):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


def _command(sub, name: str, *, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_Help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam-hq", description="SAM-HQ segmentation from the command line")
    sub = parser.add_subparsers(dest="command", required=True)

    _command(sub, "models", help="the model registry and which checkpoints are cached")

    p = _command(sub, "embed", help="precompute embeddings into the store (resumable)")
    p.add_argument("image")
    _add_model(p)
    _add_image_options(p)

    p = _command(sub, "segment", help="labels from prompts saved by napari (CSV)")
    p.add_argument("image")
    _add_model(p)
    _add_image_options(p)
    p.add_argument("--points", help="napari points CSV (label column: positive/negative)")
    p.add_argument("--boxes", help="napari shapes CSV (rectangles)")
    p.add_argument("--out", required=True, help="labels TIFF to write")

    p = _command(sub, "auto", help="segment everything: labels without prompts")
    p.add_argument("image")
    _add_model(p)
    _add_image_options(p)
    _add_auto_options(p)
    p.add_argument("--out", required=True, help="labels TIFF to write")

    p = _command(sub, "measure", help="per-object measurements (regionprops) as CSV")
    p.add_argument("labels")
    p.add_argument("--image", help="intensity image (same shape as the labels)")
    p.add_argument("--channel-axis", type=int, help="axis of the image that holds channels (with --channel)")
    p.add_argument("--channel", type=int, help="the channel to measure intensities in (with --channel-axis)")
    p.add_argument("--spacing", type=float, nargs="+", help="pixel size per axis (data order)")
    p.add_argument("--out", required=True, help="CSV to write")

    p = _command(sub, "batch", help="many files: labels + measurements per file, a summary")
    p.add_argument("pattern", help='files, as a quoted glob: "data/*.tif"')
    _add_model(p)
    _add_image_options(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--prompts-dir", help="folder with <name>.points.csv / <name>.boxes.csv per image")
    how.add_argument("--auto", action="store_true", help="segment everything")
    _add_auto_options(p)
    p.add_argument("--out-dir", required=True, help="folder for <name>_labels.tif, <name>_measurements.csv and "
                                                     "summary.csv")
    p.add_argument("--scheduler", default="local",
                   help="'local' (a LocalCluster), a dask scheduler address (tcp://host:8786), or 'serial'")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")

    p = _command(sub, "train", help="adapt the decoder, or train an instance head (--head instances), on your "
                                     "images and label images (stored embeddings, the encoder frozen)")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--labels", required=True, help="folder of label images, same file names as the images")
    _add_model(p)
    p.add_argument("--head", choices=["instances"],
                   help="train an instance head for segment everything (ais, apg) instead of adapting the decoder")
    p.add_argument("--out", required=True,
                   help="the adapted checkpoint, or with --head the head file (.pth; a .json card beside it)")
    p.add_argument("--minutes", type=float,
                   help="time budget (default: 5 with --head, else none: --epochs decide)")
    p.add_argument("--epochs", type=int, default=20, help="decoder: passes over the objects")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the images held out for the score")
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, prompts, crops)")
    p.add_argument("--train", default="hq", choices=["hq", "decoder"],
                   help="decoder: hq trains the HQ token, its MLP and mask features; decoder the whole decoder")
    p.add_argument("--prompts", nargs="+", default=["box", "points", "mask"],
                   choices=["box", "points", "mask", "refine"],
                   help="decoder: prompt kinds to train on ('refine': to refine label images with the model)")
    p.add_argument("--store", help="embedding store folder (default: the cache folder; 'none': RAM only)")

    p = _command(sub, "refine", help="re-segment every object of a label image (Cellpose, StarDist, ...)")
    p.add_argument("image")
    p.add_argument("labels", help="label image of the same shape (integer ids; kept in the output)")
    _add_model(p)
    _add_image_options(p)
    p.add_argument("--out", required=True, help="refined labels TIFF to write")
    p.add_argument("--table", help="per-object changes CSV (default: next to --out, .refine.csv)")
    p.add_argument("--min-iou", type=float, default=0.5,
                   help="keep the old mask when the new one overlaps it less than this")
    p.add_argument("--no-point", action="store_true", help="prompt without the interior point")
    p.add_argument("--no-mask", action="store_true", help="prompt without the object's own mask")
    p.add_argument("--hq-token-only", action="store_true", help="answer with the HQ mask alone (no SAM mask added)")

    p = _command(sub, "track", help="link objects through time with divisions: given per-frame labels, or "
                                     "segmented here; writes DIR/labels.tif, DIR/res_track.txt and DIR/ctc/")
    p.add_argument("movie", help="the movie, T x Y x X (or T x Z x Y x X)")
    p.add_argument("--labels", help="per-frame label images of the movie (ids may differ from frame to frame)")
    p.add_argument("--model", help="segment the frames with this model (without --labels)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where the model runs")
    p.add_argument("--head", help="an instance head: frames segmented by it (ais); without: the grid (amg)")
    p.add_argument("--store", help="embedding store folder (default: the cache folder; 'none': RAM only)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--max-distance", type=float, default=15.0, help="how far (pixels) an object moves between frames")
    p.add_argument("--max-gap", type=int, default=2, help="frames an object may be missing and keep its track")
    p.add_argument("--division-distance", type=float, default=15.0,
                   help="how far a daughter's centre may be from its parent's (0: no divisions)")
    return parser


# ---------------------------------------------------------------------------- commands


def cmd_models(args) -> int:
    from .model.download import cache_dir, cached_path, is_cached
    from .model.registry import CHECKPOINTS

    print(f"cache folder: {cache_dir()}")
    print(f"{'name':9} {'file':22} {'size':>9}  cached")
    for name, info in CHECKPOINTS.items():
        size = f"{info.size / 2**20:.0f} MB" if info.size else "unknown"
        where = str(cached_path(info)) if is_cached(info) else "no"
        print(f"{name:9} {info.file_name:22} {size:>9}  {where}")
    return EXIT_OK


def _load(args, *, lazy: bool = False):
    """The image and the model. ``lazy``: a ``LazyModel`` that loads only when a tile must be
    encoded (its name and checkpoint id are known from an earlier load of the same file)."""
    from .engine.io.files import InputError, read_image
    from .model.lazy import LazyModel

    try:
        image = read_image(args.image, channel_axis=args.channel_axis, channel=args.channel)
    except InputError as err:
        raise CliError(str(err), EXIT_INPUT) from err
    try:
        model = LazyModel(args.model, device=args.device)
    except (RuntimeError, ValueError, OSError) as err:
        raise CliError(str(err).splitlines()[0], EXIT_ERROR) from err
    if not (lazy and model.identity_known):
        _load_now(model)
    return image, model


def _load_now(model) -> None:
    """Load ``model`` (a ``LazyModel``), turning a bad checkpoint into a CLI error."""
    from .model.errors import CheckpointError

    try:
        model.load()
    except CheckpointError as err:
        raise CliError(str(err), EXIT_INPUT) from err
    except (RuntimeError, ValueError, OSError) as err:
        raise CliError(str(err).splitlines()[0], EXIT_ERROR) from err


def _session(args, image, model):
    from .engine import SegmentationSession
    from .engine.io.batch import open_store

    try:
        store = open_store(args.store)
        return SegmentationSession(model, image.data, rgb=image.rgb, store=store,
                                   tile_size=args.tile, overlap=args.overlap)
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from err


def cmd_embed(args) -> int:
    from .model.download import DownloadError
    from .model.errors import CheckpointError

    image, model = _load(args, lazy=True)
    session = _session(args, image, model)
    bar = Progress("embed")
    t0 = time.perf_counter()
    gen = session.iter_embed()  # the session loads the model at the first tile it must encode
    try:
        while True:
            fraction, key = next(gen)
            bar(fraction, f"slice {key}" if key else "")
    except StopIteration as stop:
        encoded = stop.value
    except (CheckpointError, DownloadError) as err:
        code = EXIT_INPUT if isinstance(err, CheckpointError) else EXIT_ERROR
        raise CliError(str(err).splitlines()[0], code) from err
    n = len(session.keys) * len(session.grid_tiles())
    print(f"{n} tile(s) of {len(session.keys)} slice(s): {encoded} encoded, {n - encoded} already stored "
          f"({time.perf_counter() - t0:.1f} s); store {session.store.root or 'RAM'}"
          + ("" if model.loaded else "; the model was not needed"))
    return EXIT_OK


def cmd_segment(args) -> int:
    from .engine.io.batch import labels_from_prompts
    from .engine.io.files import (
        InputError,
        UnreadableInput,
        prompts_by_slice,
        read_boxes_csv,
        read_points_csv,
        write_labels,
    )

    if not args.points and not args.boxes:
        raise CliError("give --points and/or --boxes (CSV files saved from napari layers)", EXIT_USAGE)
    image, model = _load(args)
    ndim = len(image.lead_shape) + 2
    try:
        points = read_points_csv(args.points, ndim) if args.points else None
        boxes = read_boxes_csv(args.boxes, ndim) if args.boxes else None
        objects = prompts_by_slice(image, points, boxes, source=args.points or args.boxes)
    except UnreadableInput as err:
        raise CliError(str(err), EXIT_INPUT) from err
    except InputError as err:  # readable, but not prompts for this image
        raise CliError(str(err), EXIT_MISMATCH) from err
    if not objects:
        raise CliError("the prompts hold no object (no box and no positive point)", EXIT_MISMATCH)
    labels = labels_from_prompts(_session(args, image, model), objects)
    write_labels(args.out, labels)
    print(f"{int(labels.max())} object(s) -> {args.out}")
    return EXIT_OK


def cmd_auto(args) -> int:
    from .engine.automatic.modes import iter_segment_everything
    from .engine.io.files import write_labels

    settings = _auto_settings(args)
    image, model = _load(args)
    head = _head(args, model)
    session = _session(args, image, model)
    bar = Progress("auto")
    gen = iter_segment_everything(session, None, settings, mode=args.mode, head=head)  # mode and head checked
    try:
        while True:
            bar(*next(gen))
    except StopIteration as stop:
        labels = stop.value
    write_labels(args.out, labels)
    print(f"{int(labels.max())} object(s) -> {args.out}")
    return EXIT_OK


def _head(args, model):
    """The ``--head`` file, checked against the model (``None`` without one)."""
    if not args.head:
        if args.mode in ("ais", "apg"):
            raise CliError(f"--mode {args.mode} needs --head (train one: napari-sam-hq train --head instances)",
                           EXIT_USAGE)
        return None
    from .engine.automatic.instances import HeadError, load_head

    try:
        return load_head(args.head, model=model)[0]
    except HeadError as err:
        raise CliError(str(err), EXIT_INPUT) from err


def cmd_measure(args) -> int:
    from .engine.io.files import InputError, read_image, write_table
    from .engine.io.measure import measure

    try:
        labels = read_image(args.labels, rgb=False).data
        image = None
        if args.image:
            image = read_image(args.image, channel_axis=args.channel_axis, channel=args.channel, rgb=False).data
    except InputError as err:
        raise CliError(str(err), EXIT_INPUT) from err
    try:
        table = measure(labels, image, spacing=args.spacing)
    except ValueError as err:
        raise CliError(str(err), EXIT_MISMATCH) from err
    write_table(args.out, table)
    print(f"{len(table)} object(s) -> {args.out}")
    return EXIT_OK


def cmd_batch(args) -> int:
    from .engine.io.batch import FileJob, run_batch

    files = sorted(glob.glob(args.pattern))
    if not files:
        raise CliError(f"no file matches {args.pattern!r}", EXIT_INPUT)
    if args.prompts_dir and not Path(args.prompts_dir).is_dir():
        raise CliError(f"prompts folder {args.prompts_dir} does not exist", EXIT_INPUT)
    auto = _auto_settings(args) if args.auto else None
    if args.auto and args.mode in ("ais", "apg") and not args.head:
        raise CliError(f"--mode {args.mode} needs --head (train one: napari-sam-hq train --head instances)",
                       EXIT_USAGE)
    if args.head and not Path(args.head).is_file():
        raise CliError(f"no instance head at {args.head}", EXIT_INPUT)
    job = FileJob(model=args.model, out_dir=args.out_dir, device=args.device, prompts_dir=args.prompts_dir,
                  auto=auto, store=args.store, tile_size=args.tile, overlap=args.overlap,
                  channel_axis=args.channel_axis, channel=args.channel, mode=args.mode, head=args.head)

    def report(row: dict) -> None:
        extra = f" ({row['error']})" if row["error"] else f" {row['objects']} object(s)"
        print(f"{row['status']:7} {row['file']}{extra}", flush=True)

    table = run_batch(files, job, scheduler=args.scheduler, workers=args.workers, progress=report)
    counts = table["status"].value_counts().to_dict()
    print(f"summary: {counts} -> {Path(args.out_dir) / 'summary.csv'}")
    return EXIT_ERROR if counts.get("error") and not counts.get("done") and not counts.get("skipped") else EXIT_OK


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def _training_pairs(images_dir: str, labels_dir: str) -> list[tuple[Path, Path]]:
    """Image and label files paired by identical name; a missing partner is refused."""
    images, labels = Path(images_dir), Path(labels_dir)
    for folder in (images, labels):
        if not folder.is_dir():
            raise CliError(f"{folder}: no such folder", EXIT_INPUT)
    names = sorted(f.name for f in images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise CliError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})", EXIT_INPUT)
    missing = [n for n in names if not (labels / n).is_file()]
    if missing:
        raise CliError(f"{labels / missing[0]}: missing: every image needs a label image of the same name "
                       f"({len(missing)} missing)", EXIT_MISMATCH)
    return [(images / n, labels / n) for n in names]


def _training_data(args, pairs, store, model, collect) -> list:
    """Each image and its labels checked, then ``collect(session, labels, name)`` (a generator
    of progress that returns a list) on each; the lists joined."""
    import numpy as np

    from .engine.io.files import InputError, read_image
    from .engine.volumes.session import SegmentationSession

    data, bar = [], Progress("embed")
    for n, (image_path, labels_path) in enumerate(pairs):
        try:
            image = read_image(image_path)
            labels = np.asarray(read_image(labels_path, rgb=False).data)
        except InputError as err:
            raise CliError(str(err), EXIT_INPUT) from err
        spatial = image.data.shape[:-1] if image.rgb else image.data.shape
        if labels.shape != spatial:
            raise CliError(f"{labels_path}: shape {labels.shape}, its image {spatial}: not a pair", EXIT_MISMATCH)
        if labels.dtype.kind not in "iu":
            raise CliError(f"{labels_path}: {labels.dtype} values: label images hold integer ids", EXIT_MISMATCH)
        if not labels.any():
            raise CliError(f"{labels_path}: no objects (all 0)", EXIT_MISMATCH)
        session = SegmentationSession(model, image.data, rgb=image.rgb, store=store)
        gen = collect(session, labels, image_path.name)
        try:
            while True:
                fraction, _ = next(gen)
                bar((n + fraction) / len(pairs), image_path.name)
        except StopIteration as stop:
            data += stop.value
    bar(1.0)
    return data


def cmd_train_head(args) -> int:
    from .engine.automatic.head_training import HeadTrainSettings, iter_head_samples, iter_train_head
    from .engine.automatic.instances import save_head
    from .engine.io.batch import open_store
    from .model.lazy import LazyModel

    try:
        settings = HeadTrainSettings(minutes=args.minutes or 5.0, val_fraction=args.val_fraction, seed=args.seed)
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from err
    pairs = _training_pairs(args.images, args.labels)
    model = LazyModel(args.model, device=args.device)
    _load_now(model)
    samples = _training_data(args, pairs, open_store(args.store), model,
                             lambda session, labels, name: iter_head_samples(session, labels, name=name))
    data = {"images": [str(p) for p, _ in pairs], "labels": [str(q) for _, q in pairs]}
    gen = iter_train_head(model.load(), samples, settings, data=data)
    try:
        while True:
            step = next(gen)
            if step.val_ap50 is not None:
                print(f"step {step.step:5d}  {100 * step.fraction:3.0f}% of the budget  loss {step.loss:.3f}  "
                      f"held-out AP50 {step.val_ap50:.3f}", flush=True)
    except StopIteration as stop:
        result = stop.value
    except ValueError as err:
        raise CliError(str(err), EXIT_MISMATCH) from err
    out, card = save_head(args.out, result.head, result.card)
    print(f"held-out AP50 {result.ap50_before:.3f} -> {result.ap50_after:.3f} in {result.steps} steps, "
          f"{result.seconds:.0f} s; stopped: {result.stopped}; wrote {out} and {card}")
    return EXIT_OK


def cmd_train(args) -> int:
    if args.head == "instances":
        return cmd_train_head(args)
    return cmd_train_decoder(args)


def cmd_train_decoder(args) -> int:
    from .engine.adaptation.training import TrainSettings, iter_train, iter_training_images, save_adapted
    from .engine.io.batch import open_store
    from .model.download import checkpoint_path
    from .model.lazy import LazyModel

    try:
        settings = TrainSettings(train=args.train, epochs=args.epochs, minutes=args.minutes,
                                 val_fraction=args.val_fraction, seed=args.seed, prompts=tuple(args.prompts))
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from err
    pairs = _training_pairs(args.images, args.labels)
    model = LazyModel(args.model, device=args.device)
    _load_now(model)
    data = _training_data(args, pairs, open_store(args.store), model,
                          lambda session, labels, name: iter_training_images(session, labels, name=name))
    gen = iter_train(model.load(), data, settings)
    train_bar = Progress("train")
    try:
        while True:
            step = next(gen)
            train_bar(step.fraction, f"epoch {step.epoch} loss {step.loss:.3f}"
                      + ("" if step.val_iou is None else f" held-out IoU {step.val_iou:.3f}"))
    except StopIteration as stop:
        result = stop.value
    except ValueError as err:
        raise CliError(str(err), EXIT_MISMATCH) from err
    out, card = save_adapted(args.out, checkpoint_path(args.model), result, settings=settings,
                             data={"images": [str(p) for p, _ in pairs], "labels": [str(q) for _, q in pairs]})
    print(f"held-out mean IoU {result.iou_before:.3f} -> {result.iou_after:.3f} (HQ mask "
          f"{result.iou_before_hq_only:.3f} -> {result.iou_after_hq_only:.3f}) after {result.epochs} epoch(s), "
          f"{result.seconds:.0f} s; stopped: {result.stopped}; wrote {out} and {card}")
    return EXIT_OK


def cmd_refine(args) -> int:
    import numpy as np

    from .engine.adaptation.refine import REFINED, RefineSettings, iter_refine
    from .engine.io.files import InputError, read_image, write_labels, write_table

    try:
        settings = RefineSettings(min_iou=args.min_iou, use_point=not args.no_point, use_mask=not args.no_mask,
                                  hq_token_only=args.hq_token_only)
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from err
    try:
        labels = read_image(args.labels, rgb=False).data
    except InputError as err:
        raise CliError(str(err), EXIT_INPUT) from err
    image, model = _load(args)
    spatial = tuple(image.data.shape[:-1] if image.rgb else image.data.shape)
    if tuple(labels.shape) != spatial:
        raise CliError(f"{args.labels}: shape {tuple(labels.shape)}, the image {spatial}: not its labels",
                       EXIT_MISMATCH)
    if labels.dtype.kind not in "iu":
        raise CliError(f"{args.labels}: {labels.dtype} values: label images hold integer ids", EXIT_MISMATCH)
    session = _session(args, image, model)
    bar = Progress("refine")
    gen = iter_refine(session, labels, None, settings)
    try:
        while True:
            bar(*next(gen))
    except StopIteration as stop:
        result = stop.value
    out = np.array(labels)
    result.write(out)
    write_labels(args.out, out)
    table_path = args.table or str(Path(args.out).with_suffix("")) + ".refine.csv"
    write_table(table_path, result.table())
    refined = sum(c.status == REFINED for c in result.changes)
    print(f"{refined} of {len(result.changes)} object(s) refined -> {args.out}; changes per object -> {table_path}")
    return EXIT_OK


def cmd_track(args) -> int:
    import numpy as np

    from .engine.io.files import InputError, read_image
    from .engine.tracking.ctc import iter_write_ctc
    from .engine.tracking.linking import TrackSettings, check_movie, iter_link

    try:
        settings = TrackSettings(max_distance=args.max_distance, max_gap=args.max_gap,
                                 division_distance=args.division_distance)
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from err
    if bool(args.labels) == bool(args.model):
        raise CliError("give --labels (per-frame label images to link) or --model (to segment the frames), one "
                       "of the two", EXIT_USAGE)
    out = Path(args.out)
    existing = [p for p in (out / "labels.tif", out / "res_track.txt", out / "ctc") if p.exists()]
    if existing and not args.force:
        raise CliError(f"{existing[0]} exists: choose another --out, or --force to replace it", EXIT_USAGE)
    try:
        movie = read_image(args.movie, rgb=False)
    except InputError as err:
        raise CliError(str(err), EXIT_INPUT) from err
    try:
        check_movie(movie.data.shape, args.movie)
    except ValueError as err:
        raise CliError(str(err), EXIT_MISMATCH) from err
    if args.labels:
        try:
            frames = read_image(args.labels, rgb=False).data
        except InputError as err:
            raise CliError(str(err), EXIT_INPUT) from err
        if tuple(frames.shape) != tuple(movie.data.shape):
            raise CliError(f"{args.labels}: shape {tuple(frames.shape)}, the movie {tuple(movie.data.shape)}: not "
                           "its labels", EXIT_MISMATCH)
        if np.dtype(frames.dtype).kind not in "iu":
            raise CliError(f"{args.labels}: {frames.dtype} values: label images hold integer ids", EXIT_MISMATCH)
    else:
        from .engine.tracking.frames import SegmentedFrames
        from .model.lazy import LazyModel

        model = LazyModel(args.model, device=args.device)
        _load_now(model)
        head = _head(argparse.Namespace(head=args.head, mode=None), model)
        session = _session(argparse.Namespace(store=args.store, tile=1024, overlap=256), movie, model)
        frames = SegmentedFrames(session, head=head)
    bar = Progress("track")
    gen = iter_link(frames, settings)
    try:
        while True:
            bar(*next(gen))
    except StopIteration as stop:
        tracks = stop.value
    except ValueError as err:  # no frame has an object
        raise CliError(str(err), EXIT_MISMATCH) from err
    gen = iter_write_ctc(out, frames, tracks, force=args.force)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        labels_path, track_path = stop.value
    print(f"{len(tracks.spans)} track(s), {len(tracks.divisions)} division(s) -> {labels_path}, {track_path} "
          f"and {out / 'ctc'} (CTC)")
    return EXIT_OK


COMMANDS = {"models": cmd_models, "embed": cmd_embed, "segment": cmd_segment, "auto": cmd_auto,
            "measure": cmd_measure, "batch": cmd_batch, "train": cmd_train, "refine": cmd_refine,
            "track": cmd_track}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 and a usage line on bad arguments
    from .engine.volumes import memory

    memory.setup_heap()  # steady malloc thresholds: decoding runs ~20% faster (engine/volumes/memory.py)
    try:
        return COMMANDS[args.command](args)
    except CliError as err:
        print(f"napari-sam-hq: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("napari-sam-hq: interrupted (finished outputs are kept; run again to resume)", file=sys.stderr)
        return 130


def run() -> None:
    """The ``napari-sam-hq`` command: ``main``, then exit.

    Before exiting, every object is moved out of the garbage collector's reach
    (``gc.freeze``): the interpreter's last collections went over the hundreds of thousands
    of objects torch makes at import, 0.34 s at every exit (0.11 s frozen), a tenth of a
    whole ``auto --mode ais`` run. Files are written and closed before ``main`` returns;
    the streams are flushed at exit as always. (Not in ``main``: tests call it in their own
    process, whose collector must keep working.)
    """
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()

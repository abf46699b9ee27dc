"""The command line end to end: real files in, real files out (small random-weight checkpoint)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from napari.layers import Points, Shapes
from napari_builtins.io import napari_write_points, napari_write_shapes

from napari_sam_hq.cli import main
from napari_sam_hq.engine.io.files import atomic_write, read_boxes_csv, read_points_csv

from .conftest import blob_image


@pytest.fixture
def ckpt(small_checkpoint) -> str:
    return small_checkpoint


def _save_points(path: Path, coords, labels) -> Path:
    """A Points layer saved by napari's own CSV writer."""
    feats = pd.DataFrame({"label": pd.Categorical(labels, categories=["positive", "negative"])})
    data, meta, _ = Points(np.asarray(coords, float), features=feats).as_layer_data_tuple()
    return Path(napari_write_points(str(path), data, meta))


def _save_boxes(path: Path, boxes) -> Path:
    """Rectangles (min corner, max corner in data order) saved by napari's CSV writer."""
    shapes = []
    for lo, hi in boxes:
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        lead = lo[:-2]
        corners = [(lo[-2], lo[-1]), (lo[-2], hi[-1]), (hi[-2], hi[-1]), (hi[-2], lo[-1])]
        shapes.append(np.array([[*lead, y, x] for y, x in corners]))
    data, meta, _ = Shapes(shapes, shape_type="rectangle").as_layer_data_tuple()
    return Path(napari_write_shapes(str(path), data, meta))


def test_napari_csv_round_trip(tmp_path):
    pts = _save_points(tmp_path / "p.csv", [[2, 10.5, 20], [1, 30, 40]], ["positive", "negative"])
    coords, labels, objects = read_points_csv(pts, 3)
    np.testing.assert_array_equal(coords, [[2, 10.5, 20], [1, 30, 40]])
    assert labels.tolist() == [1, 0] and objects is None
    box = _save_boxes(tmp_path / "b.csv", [([3, 5, 6], [3, 25, 40])])
    np.testing.assert_array_equal(read_boxes_csv(box, 3), [[[3, 5, 6], [3, 25, 40]]])
    with pytest.raises(ValueError, match=r"do not match the image's 2 axes"):
        read_points_csv(pts, 2)


def test_models_lists_the_registry_and_the_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_HQ_CACHE", str(tmp_path))
    (tmp_path / "sam_hq_vit_tiny.pth").write_bytes(b"x")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("vit_b", "vit_l", "vit_h", "vit_tiny"):
        assert name in out
    assert str(tmp_path / "sam_hq_vit_tiny.pth") in out and out.count(" no") == 3


def test_embed_is_resumable_and_fills_the_store(ckpt, tmp_path, capsys):
    stack = np.stack([blob_image(64, 80, seed=s, channels=1) for s in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    store = tmp_path / "emb.zarr"
    args = ["embed", str(tmp_path / "stack.tif"), "--model", ckpt, "--device", "cpu", "--store", str(store)]
    assert main(args) == 0
    assert "3 encoded" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 encoded, 3 already stored" in capsys.readouterr().out


_PROBE = """
import json, sys
from napari_sam_hq.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}))
"""


def _probe(args: list[str], env: dict) -> dict:
    """Run the CLI in a fresh process; its exit code and whether it imported torch."""
    import json
    import os

    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "out": proc.stdout}


def test_help_and_a_store_reusing_embed_never_import_torch(ckpt, tmp_path):
    """--help builds the parser without torch; a second embed finds every tile stored and the
    checkpoint's identity recorded, so it neither loads the model nor imports torch. A changed
    checkpoint file is loaded again, not trusted."""
    import os
    import shutil

    env = {"NAPARI_SAM_HQ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", "import sys; from napari_sam_hq.cli import build_parser; "
                           "build_parser().format_help(); print('torch' in sys.modules)"],
                          capture_output=True, text=True, env={**os.environ, **env})
    assert proc.stdout.strip() == "False", proc.stderr
    model = tmp_path / "model.pth"
    shutil.copy(ckpt, model)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([blob_image(48, 64, seed=s, channels=1) for s in range(2)]))
    args = ["embed", str(tmp_path / "stack.tif"), "--model", str(model), "--device", "cpu",
            "--store", str(tmp_path / "emb.zarr")]
    first = _probe(args, env)
    assert first["rc"] == 0 and first["torch"] and "2 encoded" in first["out"]
    second = _probe(args, env)
    assert second["rc"] == 0 and not second["torch"], second["out"]
    assert "0 encoded, 2 already stored" in second["out"] and "the model was not needed" in second["out"]
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file "changed"
    third = _probe(args, env)
    assert third["rc"] == 0 and third["torch"] and "0 encoded" in third["out"]


def test_segment_from_napari_csvs_writes_one_id_per_object(ckpt, tmp_path):
    stack = np.stack([blob_image(80, 100, seed=s, channels=1) for s in range(3)])
    tifffile.imwrite(tmp_path / "img.tif", stack, photometric="minisblack")  # three slices
    pts = _save_points(
        tmp_path / "p.csv", [[0, 40, 50], [0, 10, 10], [2, 40, 50]], ["positive", "negative", "positive"]
    )
    boxes = _save_boxes(tmp_path / "b.csv", [([1, 5, 5], [1, 40, 60]), ([1, 45, 30], [1, 75, 95])])
    out = tmp_path / "labels.tif"
    assert main(["segment", str(tmp_path / "img.tif"), "--model", ckpt, "--device", "cpu",
                 "--points", str(pts), "--boxes", str(boxes), "--out", str(out), "--store", "none"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (3, 80, 100) and labels.dtype == np.uint16
    with tifffile.TiffFile(out) as tif:  # three grey slices, not one RGB image
        assert len(tif.pages) == 3 and tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    # slice 1: two boxes, two ids; slices 0 and 2: one object of points only, one shared id
    assert len(set(np.unique(labels[1])) - {0}) == 2
    assert set(np.unique(labels[0])) - {0} == set(np.unique(labels[2])) - {0} and labels[0].any()
    assert not (set(np.unique(labels[0])) & set(np.unique(labels[1])) - {0})


def test_measure_table_values(tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 3:8] = 1  # 4 x 5
    labels[10:20, 20:30] = 7
    image = np.arange(600, dtype=np.float32).reshape(20, 30)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    tifffile.imwrite(tmp_path / "i.tif", image)
    assert main(["measure", str(tmp_path / "l.tif"), "--image", str(tmp_path / "i.tif"),
                 "--out", str(tmp_path / "t.csv")]) == 0
    t = pd.read_csv(tmp_path / "t.csv")
    assert t["label"].tolist() == [1, 7] and t["area"].tolist() == [20, 100]
    assert t.loc[0, "centroid-0"] == pytest.approx(3.5) and t.loc[0, "centroid-1"] == pytest.approx(5)
    assert t.loc[0, "bbox-0"] == 2 and t.loc[0, "bbox-3"] == 8
    assert t.loc[0, "intensity_mean"] == pytest.approx(image[2:6, 3:8].mean())
    assert t.loc[1, "equivalent_diameter"] == pytest.approx(2 * np.sqrt(100 / np.pi))
    vol = np.zeros((4, 10, 10), np.uint8)
    vol[1:3, 2:5, 2:5] = 3
    tifffile.imwrite(tmp_path / "v.tif", vol)
    assert main(["measure", str(tmp_path / "v.tif"), "--out", str(tmp_path / "v.csv")]) == 0
    assert pd.read_csv(tmp_path / "v.csv")["volume"].tolist() == [18]


def test_bad_inputs_exit_with_one_clear_line(ckpt, tmp_path, capsys):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, blob_image(40, 50, channels=1))
    assert main(["segment", str(tmp_path / "nope.tif"), "--model", ckpt, "--points", "x.csv", "--out", "o.tif"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.tif: no such file" in err
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    assert main(["embed", str(tmp_path / "junk.tif"), "--model", ckpt]) == 3
    assert "cannot read it as an image" in capsys.readouterr().err
    assert main(["segment", str(img), "--model", ckpt, "--device", "cpu", "--points", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "o.tif")]) == 3
    assert "none.csv: cannot read it" in capsys.readouterr().err
    far = _save_points(tmp_path / "far.csv", [[200, 300]], ["positive"])
    out = tmp_path / "o.tif"
    assert main(["segment", str(img), "--model", ckpt, "--device", "cpu", "--points", str(far), "--out", str(out)]) == 4
    assert "outside the 40 x 50 image" in capsys.readouterr().err and not out.exists()
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((10, 10), np.uint8))
    assert main(["measure", str(tmp_path / "l.tif"), "--image", str(img), "--out", str(tmp_path / "t.csv")]) == 4
    assert "has shape (40, 50), the labels (10, 10)" in capsys.readouterr().err
    assert main(["auto", str(img), "--model", ckpt, "--points-per-side", "0", "--out", str(out)]) == 2
    assert "points_per_side must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(img)])  # no --model, no --out
    assert exc.value.code == 2
    assert main(["embed", str(img), "--model", str(tmp_path / "missing.pth")]) == 3


def test_outputs_are_atomic(tmp_path):
    target = tmp_path / "out.tif"

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []


def test_auto_writes_labels(ckpt, tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", blob_image(64, 72, seed=4, channels=1))
    out = tmp_path / "auto.tif"
    assert main(["auto", str(tmp_path / "img.tif"), "--model", ckpt, "--device", "cpu", "--points-per-side", "4",
                 "--pred-iou-thresh", "0", "--stability-thresh", "0", "--max-fraction", "1", "--out", str(out)]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (64, 72) and labels.max() >= 1


def _batch_inputs(tmp_path: Path) -> tuple[Path, Path]:
    data, prompts = tmp_path / "data", tmp_path / "prompts"
    data.mkdir()
    prompts.mkdir()
    for i in range(3):
        tifffile.imwrite(data / f"img{i}.tif", blob_image(60, 70, seed=i, channels=1))
        _save_boxes(prompts / f"img{i}.boxes.csv", [([5, 5], [40, 50]), ([30, 20], [58, 68])])
    (data / "img3.tif").write_bytes(b"broken")  # one bad file
    _save_boxes(prompts / "img3.boxes.csv", [([5, 5], [40, 50])])
    return data, prompts


def test_batch_serial_resumes_and_reports_bad_files(ckpt, tmp_path, capsys):
    data, prompts = _batch_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["batch", str(data / "*.tif"), "--model", ckpt, "--device", "cpu", "--prompts-dir", str(prompts),
            "--out-dir", str(out), "--scheduler", "serial", "--store", "none"]
    assert main(args) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["done", "done", "done", "error"]
    assert "cannot read it as an image" in summary["error"].iloc[3]
    for i in range(3):
        labels = tifffile.imread(out / f"img{i}_labels.tif")
        assert set(np.unique(labels)) <= {0, 1, 2} and labels.any()
        assert len(pd.read_csv(out / f"img{i}_measurements.csv")) == len(np.unique(labels)) - 1
    assert main(args) == 0
    assert pd.read_csv(out / "summary.csv")["status"].tolist() == ["skipped"] * 3 + ["error"]


@pytest.mark.slow
def test_batch_on_a_dask_local_cluster_equals_serial(ckpt, tmp_path):
    data, prompts = _batch_inputs(tmp_path)
    common = ["--model", ckpt, "--device", "cpu", "--prompts-dir", str(prompts), "--store", "none"]
    serial = ["--out-dir", str(tmp_path / "serial"), "--scheduler", "serial"]
    assert main(["batch", str(data / "*.tif"), *common, *serial]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "napari_sam_hq.cli", "batch", str(data / "*.tif"), *common,
         "--out-dir", str(tmp_path / "dask"), "--scheduler", "local", "--workers", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "dask" / "summary.csv")
    assert summary["status"].tolist() == ["done", "done", "done", "error"]
    for i in range(3):
        a = tifffile.imread(tmp_path / "serial" / f"img{i}_labels.tif")
        b = tifffile.imread(tmp_path / "dask" / f"img{i}_labels.tif")
        np.testing.assert_array_equal(a, b)


def _training_folders(tmp_path: Path, n: int = 2) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    yy, xx = np.indices((96, 120))
    for i in range(n):
        tifffile.imwrite(images / f"cells{i}.tif", blob_image(96, 120, seed=i, channels=1))
        lab = np.zeros((96, 120), np.uint16)
        for j, (cy, cx) in enumerate(((30, 30), (60, 80), (25, 95))):
            lab[(yy - cy - 3 * i) ** 2 + (xx - cx) ** 2 <= 15**2] = j + 1
        tifffile.imwrite(labels / f"cells{i}.tif", lab)
    return images, labels


def test_train_writes_an_adapted_checkpoint_and_refuses_bad_pairs(ckpt, tmp_path, capsys):
    from napari_sam_hq.model import load_model

    images, labels = _training_folders(tmp_path)
    out = tmp_path / "adapted.pth"
    args = ["train", "--images", str(images), "--labels", str(labels), "--model", ckpt, "--out", str(out),
            "--epochs", "1", "--store", str(tmp_path / "store.zarr"), "--device", "cpu"]
    assert main(args) == 0
    assert "held-out mean IoU" in capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert load_model(out, device="cpu").checkpoint_id == load_model(ckpt, device="cpu").checkpoint_id
    # bad pairs: one clear line each, nothing written
    (labels / "cells1.tif").unlink()
    assert main([*args[:-6], "--out", str(tmp_path / "x.pth"), "--device", "cpu"]) == 4
    assert "cells1.tif: missing" in capsys.readouterr().err
    tifffile.imwrite(labels / "cells1.tif", np.zeros((96, 120), np.float32) + 0.5)
    assert main([*args[:-6], "--out", str(tmp_path / "x.pth"), "--device", "cpu"]) == 4
    assert "integer ids" in capsys.readouterr().err
    tifffile.imwrite(labels / "cells1.tif", np.zeros((50, 120), np.uint16))
    assert main([*args[:-6], "--out", str(tmp_path / "x.pth"), "--device", "cpu"]) == 4
    assert "not a pair" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_refine_keeps_ids_writes_a_table_and_refuses_labels_of_another_image(ckpt, tmp_path, capsys):
    import pandas as pd

    images, labels = _training_folders(tmp_path, n=1)
    image, lab = images / "cells0.tif", labels / "cells0.tif"
    out = tmp_path / "refined.tif"
    base = [image.as_posix(), lab.as_posix(), "--model", ckpt, "--device", "cpu", "--store", "none"]
    # every answer accepted (a random model's masks): ids stay, changes are in the table
    assert main(["refine", *base, "--out", str(out), "--min-iou", "0"]) == 0
    assert "object(s) refined" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "refined.refine.csv")
    given, refined = tifffile.imread(lab), tifffile.imread(out)
    assert list(table.label) == [1, 2, 3] and set(table.status) <= {"refined", "kept: empty answer"}
    assert set(np.unique(refined)) <= {0, 1, 2, 3} and refined.shape == given.shape
    for row in table.itertuples():
        assert row.area_before == (given == row.label).sum() and row.area_after == (refined == row.label).sum()
    # the default keeps masks a model changed beyond recognition; the table says why
    assert main(["refine", *base, "--out", str(out), "--table", str(tmp_path / "t.csv")]) == 0
    kept = pd.read_csv(tmp_path / "t.csv")
    np.testing.assert_array_equal(tifffile.imread(out)[np.isin(given, kept.label[kept.iou < 0.5])],
                                  given[np.isin(given, kept.label[kept.iou < 0.5])])
    # labels of another image, float labels, a missing file: one line each, nothing written
    tifffile.imwrite(tmp_path / "small.tif", given[:50])
    tifffile.imwrite(tmp_path / "float.tif", given.astype(np.float32))
    for bad, code, words in ((tmp_path / "small.tif", 4, "not its labels"), (tmp_path / "float.tif", 4, "integer ids"),
                             (tmp_path / "none.tif", 3, "none.tif")):
        argv = ["refine", image.as_posix(), bad.as_posix(), *base[2:], "--out", str(tmp_path / "x.tif")]
        assert main(argv) == code
        assert words in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()


def _scene_folders(tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    from .engine.scenes import cell_scene

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(n):
        image, truth = cell_scene((128, 128), seed=20 + i)
        tifffile.imwrite(images / f"scene{i}.tif", image)
        tifffile.imwrite(labels / f"scene{i}.tif", truth.astype(np.uint16))
    return images, labels


def test_train_a_head_then_segment_everything_with_it(ckpt, tmp_path, capsys):
    import json

    images, labels = _scene_folders(tmp_path)
    head = tmp_path / "cells.head.pth"
    store = str(tmp_path / "store.zarr")
    assert main(["train", "--head", "instances", "--images", str(images), "--labels", str(labels), "--model", ckpt,
                 "--out", str(head), "--minutes", "0.2", "--store", store, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "held-out AP50" in out and "stopped:" in out and head.is_file()
    card = json.loads(head.with_suffix(".pth.json").read_text())
    assert card["held_out"]["images"] == 1 and card["data"]["images"][0].endswith("scene0.tif")
    image = str(images / "scene0.tif")
    common = ["--model", ckpt, "--device", "cpu", "--store", store]
    for mode in (None, "apg", "amg"):
        target = tmp_path / f"auto_{mode}.tif"
        assert main(["auto", image, *common, "--head", str(head), "--out", str(target),
                     *(["--mode", mode] if mode else [])]) == 0
        assert tifffile.imread(target).shape == (128, 128)
    batch_out = tmp_path / "batch"
    assert main(["batch", str(images / "*.tif"), *common, "--auto", "--head", str(head), "--out-dir", str(batch_out),
                 "--scheduler", "serial"]) == 0
    assert pd.read_csv(batch_out / "summary.csv")["status"].tolist() == ["done"] * 3


def test_auto_refuses_a_missing_corrupt_or_foreign_head_in_one_line(ckpt, tmp_path, capsys):
    import torch

    from napari_sam_hq.engine.automatic.instances import HeadCard, build_head, save_head

    tifffile.imwrite(tmp_path / "img.tif", blob_image(64, 72, seed=4, channels=1))
    target = tmp_path / "labels.tif"
    base = ["auto", str(tmp_path / "img.tif"), "--model", ckpt, "--device", "cpu", "--out", str(target)]
    assert main([*base, "--mode", "ais"]) == 2
    assert "--mode ais needs --head" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a head")
    assert main([*base, "--head", str(corrupt)]) == 3
    err = capsys.readouterr().err
    assert "not a readable instance head" in err and err.count("\n") == 1
    h = build_head({"width": 8})
    foreign, _ = save_head(tmp_path / "foreign.pth", h, HeadCard("vit_h", "0123abcd", dict(h.config)))
    assert main([*base, "--head", str(foreign)]) == 3
    assert "trained on the features of vit_h" in capsys.readouterr().err
    assert main([*base, "--head", ckpt]) == 3  # a SAM-HQ checkpoint is not a head
    assert "use it as --model" in capsys.readouterr().err
    assert not target.exists()
    assert torch.load(foreign, weights_only=True)["card"]["model_name"] == "vit_h"


def test_train_head_refuses_images_without_objects(ckpt, tmp_path, capsys):
    images, labels = _scene_folders(tmp_path, n=2)
    tifffile.imwrite(labels / "scene1.tif", np.zeros((128, 128), np.uint16))
    out = tmp_path / "h.pth"
    assert main(["train", "--head", "instances", "--images", str(images), "--labels", str(labels), "--model", ckpt,
                 "--out", str(out), "--minutes", "0.1", "--store", "none", "--device", "cpu"]) == 4
    assert "no objects" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("command", ["embed", "segment", "auto", "measure", "batch", "train", "refine", "track"])
def test_every_option_has_a_line_of_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out.split("options:")[1]
    entries = [e for e in text.split("\n  -") if e.strip() and not e.startswith("h, --help")]
    for entry in entries:
        first, *rest = entry.strip().split("\n")
        words = " ".join([first, *rest]).split()
        described = len([w for w in words if not w.startswith("-") and not w.isupper() and "{" not in w])
        assert described >= 2, f"{command}: {entry.strip()[:60]!r} has no help"


def test_track_links_given_labels_and_writes_the_ctc_files(tmp_path, capsys):
    from .engine.movies import cell_movie

    movie = cell_movie(20, (128, 128), cells=5, divisions=2, seed=1)
    tifffile.imwrite(tmp_path / "movie.tif", movie.image)
    tifffile.imwrite(tmp_path / "labels.tif", movie.detections)
    out = tmp_path / "tracks"
    args = ["track", str(tmp_path / "movie.tif"), "--labels", str(tmp_path / "labels.tif"), "--out", str(out)]
    assert main(args) == 0
    assert "2 division(s)" in capsys.readouterr().out
    labels = tifffile.imread(out / "labels.tif")
    assert labels.shape == movie.truth.shape
    rows = [tuple(map(int, line.split())) for line in (out / "res_track.txt").read_text().splitlines()]
    assert sum(1 for r in rows if r[3]) >= 4  # two divisions: four daughters with a parent
    assert len(list((out / "ctc").glob("mask*.tif"))) == 20 and (out / "ctc" / "res_track.txt").is_file()
    assert main(args) == 2  # never over an existing output without --force
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_track_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys):
    from .engine.movies import cell_movie

    movie = cell_movie(6, (64, 64), cells=2, divisions=0, seed=2)
    tifffile.imwrite(tmp_path / "movie.tif", movie.image)
    tifffile.imwrite(tmp_path / "short.tif", movie.detections[:4], photometric="minisblack")  # 4 frames, not RGBA
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros_like(movie.detections))
    tifffile.imwrite(tmp_path / "still.tif", movie.image[0])
    out = tmp_path / "out"
    cases = [
        (["track", str(tmp_path / "movie.tif"), "--labels", str(tmp_path / "short.tif")], 4, "not its labels"),
        (["track", str(tmp_path / "still.tif"), "--labels", str(tmp_path / "still.tif")], 4, "no time axis"),
        (["track", str(tmp_path / "movie.tif"), "--labels", str(tmp_path / "empty.tif")], 4, "no frame has an object"),
        (["track", str(tmp_path / "movie.tif")], 2, "give --labels"),
    ]
    for args, code, message in cases:
        assert main([*args, "--out", str(out)]) == code, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not out.exists()


def test_track_segments_the_frames_with_a_model(ckpt, tmp_path, capsys):
    """End to end with the random-weight model: it runs, and says what it found (random weights
    may find no object: then the one line says so and nothing is written)."""
    from .engine.movies import cell_movie

    movie = cell_movie(3, (64, 64), cells=2, divisions=0, seed=3)
    tifffile.imwrite(tmp_path / "movie.tif", movie.image, photometric="minisblack")  # 3 frames, not RGB
    out = tmp_path / "out"
    code = main(["track", str(tmp_path / "movie.tif"), "--model", ckpt, "--device", "cpu", "--store", "none",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert (code == 0 and (out / "labels.tif").is_file()) or (code == 4 and "no frame has an object" in captured.err)


def test_the_command_exits_with_mains_code_and_complete_files(tmp_path):
    """``run`` (the console script) freezes the collector before exiting: its files are whole
    and its exit codes are main's."""
    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 5:20], labels[20:35, 30:45] = 1, 2
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    command = [sys.executable, "-m", "napari_sam_hq.cli"]
    done = subprocess.run([*command, "measure", str(tmp_path / "labels.tif"), "--out", str(tmp_path / "t.csv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(tmp_path / "t.csv")["area"].tolist() == [150, 225]
    missing = subprocess.run([*command, "measure", str(tmp_path / "nothing.tif"), "--out", str(tmp_path / "u.csv")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 3 and missing.stderr.startswith("napari-sam-hq: error:")
    assert not (tmp_path / "u.csv").exists()

"""Measurements plane by plane: equal to scikit-image's regionprops_table, for labels of any
size (a zarr volume is read a plane at a time; the peak is measured in a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops_table

from napari_sam_hq.engine.io.measure import iter_measure, measure

PROPS = ["label", "area", "centroid", "bbox", "equivalent_diameter_area"]
INTENSITY = ["intensity_mean", "intensity_min", "intensity_max", "intensity_std"]


def _labels(shape, seed):
    """Blobs with gaps in the ids, in shuffled order."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2)
    blobs, n = ndimage.label(noise > 0.05)
    ids = rng.choice(np.arange(1, 10 * n + 1), n, replace=False)
    return np.concatenate([[0], ids]).astype(np.uint32)[blobs]


@pytest.mark.parametrize("shape", [(90, 130), (7, 40, 50)], ids=["2d", "3d"])
@pytest.mark.parametrize("spacing", [None, "aniso"])
def test_equals_regionprops(shape, spacing):
    labels = _labels(shape, seed=len(shape))
    image = np.random.default_rng(1).normal(2000, 300, shape)  # float64: regionprops sums float32 in float32
    spacing = None if spacing is None else tuple([2.5, 0.4, 0.7][-len(shape):])
    kwargs = {} if spacing is None else {"spacing": spacing}
    expected = regionprops_table(labels, intensity_image=image, properties=PROPS + INTENSITY, **kwargs)
    got = measure(labels, image, spacing=spacing)
    size = "area" if len(shape) == 2 else "volume"
    renamed = {"equivalent_diameter_area": "equivalent_diameter", "area": size}
    assert list(got.columns) == [renamed.get(k, k) for k in expected]
    assert len(got) >= 8
    for key, values in expected.items():
        np.testing.assert_allclose(got[renamed.get(key, key)].to_numpy(float), np.asarray(values, float),
                                   rtol=1e-9, atol=1e-6, err_msg=key)
    plain = measure(labels)  # without intensities: the same first columns
    assert list(plain.columns) == list(got.columns)[: len(plain.columns)]
    # a large id (regionprops lists every id up to the largest: 4e9 of them): the same row
    big = labels.copy()
    last = got["label"].iloc[-1]
    big[labels == last] = 4_000_000_000
    again = measure(big, image, spacing=spacing)
    assert again["label"].iloc[-1] == 4_000_000_000
    np.testing.assert_array_equal(again.drop(columns="label").to_numpy(), got.drop(columns="label").to_numpy())


def test_integer_intensities_keep_their_range_and_bool_labels_are_one_object():
    labels = np.zeros((3, 20, 30), bool)
    labels[1, 2:6, 3:8] = True
    labels[2, 4:5, 3:4] = True
    image = np.arange(1800, dtype=np.uint16).reshape(3, 20, 30) * 30
    [row] = measure(labels, image).to_dict("records")
    values = image[labels]
    assert row["label"] == 1 and row["volume"] == 21
    assert row["intensity_min"] == values.min() and row["intensity_max"] == values.max()
    assert row["intensity_std"] == pytest.approx(values.astype(float).std(), rel=1e-12)
    assert measure(np.zeros((5, 6), np.uint8)).empty


def test_progress_per_plane_and_bad_input():
    vol = np.zeros((4, 8, 8), np.uint16)
    vol[2, 1:3, 1:3] = 5
    gen = iter_measure(vol)
    assert [next(gen) for _ in range(4)] == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="integer image"):
        measure(vol.astype(np.float32))
    with pytest.raises(ValueError, match="2D or 3D"):
        measure(np.zeros((2, 2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="the image has shape"):
        measure(vol, np.zeros((4, 8, 9)))
    with pytest.raises(ValueError, match="one value per axis"):
        measure(vol, spacing=(1.0, 1.0))


def test_a_volume_on_disk_is_measured_a_plane_at_a_time(tmp_path):
    """60 x 2048 x 2048 uint32 labels in zarr (1 GB dense) and a lazy uint16 image (0.5 GB):
    the measurement's peak stays within a few planes, and the table is that of the objects."""
    code = f"""
import numpy as np, zarr, dask.array as da
from napari_sam_hq.engine.io.measure import measure
z = zarr.create_array({str(tmp_path / 'l.zarr')!r}, shape=(60, 2048, 2048), chunks=(1, 512, 512), dtype='uint32')
z[10, 100:300, 200:260] = 7
z[11:40, 1500:1600, 1000:1900] = 9
image = da.ones((60, 2048, 2048), dtype=np.uint16, chunks=(1, 1024, 1024)) * 3
def status(key):
    return int(next(ln for ln in open('/proc/self/status') if ln.startswith(key)).split()[1]) / 1024
open('/proc/self/clear_refs', 'w').write('5')  # VmHWM := VmRSS
before = status('VmRSS')
t = measure(z, image)
print(t['label'].tolist(), t['volume'].tolist(), t['intensity_mean'].tolist(), round(status('VmHWM') - before))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    table, grown = out.stdout.strip().rsplit(" ", 1)
    assert table == "[7, 9] [12000.0, 2610000.0] [3.0, 3.0]", out.stdout
    # a plane: 16 MB of labels, 8 MB of image, the pixel lists of one object (~0.1 M pixels);
    # dense, the labels alone are 1 GB
    assert int(grown) < 250, f"the peak grew {grown} MB"

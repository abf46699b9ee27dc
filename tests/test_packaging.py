"""What PyPI and the napari hub read: the distributions, their metadata, one version everywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import yaml

import napari_sam_hq

ROOT = Path(__file__).resolve().parents[1]


def test_citation_names_this_version_and_the_sam_hq_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    assert str(cff["version"]) == napari_sam_hq.__version__, "bump CITATION.cff with __version__"
    titles = [ref["title"] for ref in cff["references"]]
    assert "Segment Anything in High Quality" in titles
    paper = cff["references"][titles.index("Segment Anything in High Quality")]
    assert paper["authors"][0]["family-names"] == "Ke" and paper["year"] == 2023


def test_changelog_has_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(napari_sam_hq.__version__)}\]", text, re.M)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "napari-sam-hq"
    # a clean copy: no .venv, caches or earlier builds in the sdist
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "site", "build", "dist", "*.egg-info",
                                                               "__pycache__", ".pytest_cache", ".whl", ".gl"))
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_wheel_carries_the_manifest_metadata_and_license(dists):
    [wheel] = dists.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(info).decode())
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "napari_sam_hq/napari.yaml" in names
    assert "napari_sam_hq/_napari/sample_data.py" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert meta["Version"] == napari_sam_hq.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Framework :: napari" in meta.get_all("Classifier")
    assert {u.split(",")[0] for u in meta.get_all("Project-URL")} >= {"Homepage", "Documentation", "Source"}
    assert "napari-sam-hq = napari_sam_hq:napari.yaml" in entry_points
    assert "napari-sam-hq = napari_sam_hq.cli:run" in entry_points


def test_sdist_carries_tests_docs_and_citation(dists):
    [sdist] = dists.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"LICENSE", "CITATION.cff", "CHANGELOG.md", "tests/conftest.py", "docs/index.md"} <= names
    assert not any(n.startswith((".venv", "site/")) for n in names)


def test_twine_accepts_both_distributions(dists):
    pytest.importorskip("twine")
    files = [str(p) for p in sorted(dists.iterdir())]
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

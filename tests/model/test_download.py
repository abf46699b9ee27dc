"""Checkpoint downloads against a local HTTP server on 127.0.0.1 (and file URLs)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from napari_sam_hq.model import CHECKPOINTS, DownloadError, load_model
from napari_sam_hq.model import download as dl
from napari_sam_hq.model.registry import CheckpointInfo


class _Server:
    """Serves ``files`` (name -> bytes); ``truncate`` sends fewer bytes than announced."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.truncate = files, [], False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                outer.requests.append(self.path)
                data = outer.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if outer.truncate else data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload() -> bytes:
    return bytes(range(256)) * 9000  # 2.3 MB: several chunks


@pytest.fixture
def server(payload):
    srv = _Server({"sam_hq_test.pth": payload})
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NAPARI_SAM_HQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NAPARI_SAM_HQ_MIRROR", raising=False)
    return tmp_path / "cache"


def _info(server, payload, **kw) -> CheckpointInfo:
    args = dict(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    args.update(kw)
    return CheckpointInfo("test", "sam_hq_test.pth", f"{server.url}/sam_hq_test.pth", **args)


def test_downloads_once_verifies_and_reports_progress(server, payload, cache):
    seen = []
    path = dl.ensure_checkpoint(_info(server, payload), progress=lambda d, t: seen.append((d, t)))
    assert path == cache / "sam_hq_test.pth"
    assert path.read_bytes() == payload
    assert seen[0] == (0, len(payload)) and seen[-1] == (len(payload), len(payload))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not list(cache.glob("*.part"))
    # A second call uses the cache: no new request.
    dl.ensure_checkpoint(_info(server, payload), progress=lambda d, t: None)
    assert len(server.requests) == 1


def test_wrong_checksum_leaves_nothing_behind(server, payload, cache):
    with pytest.raises(DownloadError, match="sha256 .* expected 0+"):
        dl.ensure_checkpoint(_info(server, payload, sha256="0" * 64), progress=lambda d, t: None)
    assert not any(cache.iterdir())


def test_wrong_size_is_refused(server, payload, cache):
    with pytest.raises(DownloadError, match="has 2304000 bytes, expected 5;"):
        dl.ensure_checkpoint(_info(server, payload, size=5, sha256=None), progress=lambda d, t: None)
    assert not any(cache.iterdir())


def test_interrupted_download_is_not_kept(server, payload, cache):
    server.truncate = True
    with pytest.raises(DownloadError, match="stopped at"):
        dl.ensure_checkpoint(_info(server, payload, size=None, sha256=None), progress=lambda d, t: None)
    assert not any(cache.iterdir())


def test_cancelling_the_generator_removes_the_partial_file(server, payload, cache):
    gen = dl.iter_download(_info(server, payload))
    next(gen), next(gen)
    assert list(cache.glob("*.part"))
    gen.close()
    assert not any(cache.iterdir())


def test_offline_message_says_where_to_put_the_file(payload, cache):
    info = CheckpointInfo("test", "sam_hq_test.pth", "http://127.0.0.1:9/sam_hq_test.pth")
    with pytest.raises(DownloadError) as err:
        dl.ensure_checkpoint(info, progress=lambda d, t: None)
    msg = str(err.value)
    assert "could not download sam_hq_test.pth" in msg
    assert str(cache / "sam_hq_test.pth") in msg
    assert "NAPARI_SAM_HQ_CACHE" in msg


def test_file_urls_work(tmp_path, payload, cache):
    src = tmp_path / "mirror" / "sam_hq_test.pth"
    src.parent.mkdir()
    src.write_bytes(payload)
    info = CheckpointInfo("test", "sam_hq_test.pth", src.as_uri(), size=len(payload))
    assert dl.ensure_checkpoint(info, progress=lambda d, t: None).read_bytes() == payload


def test_load_model_by_name_through_a_mirror(tiny_pair, monkeypatch, cache):
    """load_model('vit_tiny') downloads the registry file (from a local mirror), then loads it."""
    buf = Path(cache.parent / "ckpt.pth")
    torch.save(tiny_pair.state_dict, buf)
    srv = _Server({CHECKPOINTS["vit_tiny"].file_name: buf.read_bytes()})
    try:
        monkeypatch.setenv("NAPARI_SAM_HQ_MIRROR", srv.url + "/")
        model = load_model("vit_tiny", device="cpu", progress=lambda d, t: None)
        assert model.name == "vit_tiny"
        assert (cache / "sam_hq_vit_tiny.pth").is_file()
        assert dl.is_cached(CHECKPOINTS["vit_tiny"])
        load_model("vit_tiny", device="cpu")  # cached: no second request
        assert len(srv.requests) == 1
    finally:
        srv.close()


def test_registry_points_at_the_published_files():
    for name, info in CHECKPOINTS.items():
        assert info.file_name == f"sam_hq_{name}.pth"
        assert info.url.startswith("https://huggingface.co/lkeab/hq-sam/resolve/main/")
        assert info.url.endswith(info.file_name)

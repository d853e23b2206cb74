"""Downloads resume after a dropped connection, verify size and checksum, and leave no partial
file under the final name. The server is a thread on 127.0.0.1 that serves HTTP Range requests."""

from __future__ import annotations

import hashlib
import zipfile

import pytest
from conftest import LocalHTTPServer

from lesiontrack.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 4000  # about 1 MB


def test_resumes_after_dropped_connection(tmp_path):
    with LocalHTTPServer({"/data.bin": PAYLOAD}, drop_after=300_000) as server:
        path = download(f"{server.url}/data.bin", tmp_path / "data.bin",
                        sha256=hashlib.sha256(PAYLOAD).hexdigest(), backoff_s=0.01, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [None, "bytes=300000-"]
    assert not (tmp_path / "data.bin.part").exists()


def test_retries_server_errors_then_skips_verified_copy(tmp_path):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    with LocalHTTPServer({"/data.bin": PAYLOAD}, failures=2) as server:
        download(f"{server.url}/data.bin", tmp_path / "data.bin", sha256=digest, backoff_s=0.01, progress=False)
        assert len(server.requests) == 3
        download(f"{server.url}/data.bin", tmp_path / "data.bin", sha256=digest, progress=False)
        assert len(server.requests) == 3  # already there and verified: no request


def test_checksum_mismatch_leaves_nothing(tmp_path):
    expected = r"sha256 \w+, expected 0{64}"
    with LocalHTTPServer({"/data.bin": PAYLOAD}) as server, pytest.raises(DownloadError, match=expected):
        download(f"{server.url}/data.bin", tmp_path / "data.bin", sha256="00" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_broken_zip(tmp_path):
    with LocalHTTPServer({"/broken.zip": b"PK\x03\x04 not really a zip"}) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download(f"{server.url}/missing.bin", tmp_path / "missing.bin", progress=False)
        with pytest.raises(DownloadError, match="not a valid zip archive"):
            download(f"{server.url}/broken.zip", tmp_path / "broken.zip", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_valid_zip_passes(tmp_path):
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Images_png/000001_01_01/001.png", b"\x89PNG fake")
    with LocalHTTPServer({"/a.zip": archive.read_bytes()}) as server:
        path = download(f"{server.url}/a.zip", tmp_path / "out" / "a.zip", progress=False)
    assert zipfile.ZipFile(path).namelist() == ["Images_png/000001_01_01/001.png"]

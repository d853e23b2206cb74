"""Resumable, verified downloads: HTTP Range resume, retries with back-off, size and checksum
checks, progress, and never a partial file under the final name.

A download goes to ``<name>.part`` beside the destination; an interrupted one resumes from there
(``Range: bytes=N-``), and only a complete, verified file is renamed to the final name.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path

from lesiontrack.io import sha256 as file_sha256

USER_AGENT = "lesiontrack (https://github.com/lesiontrack)"


class DownloadError(RuntimeError):
    """A download failed for good: the message names the URL and what was wrong."""


def _verify(path: Path, url: str, size: int | None, sha256: str | None) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(f"{url}: size {actual_size} bytes, expected {size}")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise DownloadError(f"{url}: sha256 {actual}, expected {sha256.lower()}")
    if path.name.endswith(".zip.part") or path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
        except zipfile.BadZipFile as err:
            raise DownloadError(f"{url}: not a valid zip archive ({err})") from err
        if broken is not None:
            raise DownloadError(f"{url}: zip member {broken!r} fails its CRC check")


def _fetch_once(url: str, part: Path, timeout_s: float, progress: bool) -> int | None:
    """Append to ``part`` from where it stops; return the total size if the server told it."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)  # URLs come from config
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # nothing left to send: the partial file is complete
            return start
        raise
    with response:
        total = None
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if content_range.rpartition("/")[2].isdigit():
                total = int(content_range.rpartition("/")[2])
            mode = "ab"
        else:  # the server ignored the range: start again
            start = 0
            mode = "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        from tqdm import tqdm

        with open(part, mode) as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                           desc=Path(url).name, disable=not progress, file=sys.stderr) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")
    return total


def download(url: str, destination: str | os.PathLike, sha256: str | None = None, size: int | None = None,
             retries: int = 5, backoff_s: float = 2.0, timeout_s: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``destination`` unless a verified copy is already there.

    Interrupted transfers resume; transient failures (connection errors, time-outs, HTTP 5xx and
    429) are retried ``retries`` times with exponential back-off. The result is checked against
    ``size`` and ``sha256`` where given (zip archives are also CRC-tested) before it is renamed into
    place; a file that fails a check is deleted and reported.
    """
    destination = Path(destination)
    if destination.exists():
        try:
            _verify(destination, url, size, sha256)
            return destination
        except DownloadError:
            destination.unlink()  # a stale or corrupt copy: fetch it again
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    total = None
    for attempt in range(retries + 1):
        try:
            total = _fetch_once(url, part, timeout_s, progress)
            break
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            failure: Exception = err
        except (urllib.error.URLError, ConnectionError, TimeoutError, HTTPException, OSError) as err:
            failure = err
        if attempt == retries:
            raise DownloadError(f"{url}: failed after {retries + 1} attempts ({failure})") from failure
        time.sleep(backoff_s * 2**attempt)
    try:
        _verify(part, url, size if size is not None else total, sha256)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, destination)
    return destination

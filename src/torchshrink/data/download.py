"""Fetch a published file, check its checksum, and put it in place atomically.

Only called when the user passes ``download=True``. Each file is streamed into a
temporary file next to its destination, hashed on the way, and moved into place with
``os.replace`` only once the digest matches the published one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO
from urllib.request import urlopen  # module attribute, so tests can substitute a fake

from ..errors import DataError

CHUNK = 1 << 20
TIMEOUT_S = 60.0


def fetch(urls: Sequence[str], dest: Path, md5: str) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves bytes with this MD5.

    Raises :class:`DataError` naming every URL tried and why it failed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _fetch_one(url, dest, md5)
            return dest
        except _FetchFailed as exc:
            failures.append(f"{url} ({exc})")
    raise DataError(
        f"Could not download {dest.name}: {'; '.join(failures)}. Check the network, or "
        f"download the file by hand into {dest.parent}."
    )


class _FetchFailed(Exception):
    pass


def _fetch_one(url: str, dest: Path, md5: str) -> None:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    digest = hashlib.md5(usedforsecurity=False)  # the published checksums are MD5
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    try:
        with os.fdopen(fd, "wb") as out, Progress(*columns, console=Console(stderr=True)) as bar:
            with urlopen(url, timeout=TIMEOUT_S) as response:
                size = response.headers.get("Content-Length")
                task = bar.add_task(dest.name, total=int(size) if size else None)
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
        if digest.hexdigest() != md5:
            raise _FetchFailed(f"MD5 {digest.hexdigest()} differs from the published {md5}")
        os.replace(tmp, dest)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise _FetchFailed(str(exc) or type(exc).__name__) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_atomic(stream: BinaryIO, dest: Path) -> None:
    """Copy ``stream`` to ``dest`` through a temporary file, so ``dest`` is never partial."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, CHUNK)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

"""MNIST and Fashion-MNIST from the four standard IDX files (gzipped or not).

IDX format (LeCun, http://yann.lecun.com/exdb/mnist/): two zero bytes, a data-type code,
the number of dimensions d, then d big-endian uint32 sizes, then the values in C order.
:func:`read_idx` checks each part and reads the payload in chunks, so a header that
declares more data than the file holds is an error, never a huge allocation.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataError
from .bundle import DataBundle, make_bundle
from .download import fetch

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CHUNK = 1 << 20


@dataclass(frozen=True)
class IdxSource:
    """Where a set of IDX files lives, how to check them, and how to normalize it."""

    name: str
    dirnames: tuple[str, ...]  # subdirectories of root to search (ours, torchvision's)
    mirrors: tuple[str, ...]  # base URLs, tried in order
    md5: Mapping[str, str]  # published MD5 of each <file>.gz
    mean: float
    std: float
    classes: tuple[str, ...]


SOURCES = {
    "mnist": IdxSource(
        name="mnist",
        dirnames=("mnist", "MNIST"),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mean=0.1307,
        std=0.3081,
        classes=tuple(str(d) for d in range(10)),
    ),
    "fashion_mnist": IdxSource(
        name="fashion_mnist",
        dirnames=("fashion_mnist", "FashionMNIST"),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        mean=0.2860,
        std=0.3530,
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


def load_idx_bundle(name: str, root: Path, download: bool, limit: int | None) -> DataBundle:
    """Load ``mnist`` or ``fashion_mnist`` from ``root``, ``root/<name>`` or ``root/<name>/raw``."""
    source = SOURCES[name]
    paths = _find(source, root)
    if paths is None and download:
        target = root / source.name
        for file in FILES:
            if _existing(target / file, target / f"{file}.gz") is None:
                urls = [base + file + ".gz" for base in source.mirrors]
                fetch(urls, target / f"{file}.gz", source.md5[f"{file}.gz"])
        paths = _find(source, root)
    if paths is None:
        raise DataError(_missing_message(source, root))
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    _check_pair(train_x, train_y, paths[0], paths[1], len(source.classes))
    _check_pair(test_x, test_y, paths[2], paths[3], len(source.classes))
    return make_bundle(
        name,
        (train_x[:, None], train_y),
        (test_x[:, None], test_y),
        scale=255.0,
        mean=[source.mean],
        std=[source.std],
        classes=source.classes,
        limit=limit,
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (plain or gzip, detected by content); DataError if malformed."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            return _parse(f, path)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        message = f"Cannot read IDX file {path}: {exc}. Delete it and fetch it again."
        raise DataError(message) from exc


def _parse(f: BinaryIO, path: Path) -> np.ndarray:
    def bad(problem: str) -> DataError:
        return DataError(f"Malformed IDX file {path}: {problem}. Delete it and fetch it again.")

    head = _read_upto(f, 4)
    if len(head) < 4:
        raise bad(f"only {len(head)} bytes, shorter than the 4-byte magic number")
    if head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or head[3] == 0:
        raise bad(f"bad magic number 0x{head.hex()} (expected 0x0000TTDD: type code TT, DD dims)")
    ndim = head[3]
    dims_raw = _read_upto(f, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise bad(f"truncated header: {ndim} dimensions declared, {len(dims_raw) // 4} present")
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    dtype = np.dtype(IDX_DTYPES[head[2]])
    expected = math.prod(dims) * dtype.itemsize
    payload = _read_upto(f, expected + 1)  # one byte more reveals trailing garbage
    if len(payload) < expected:
        raise bad(f"truncated: shape {dims} needs {expected} data bytes, found {len(payload)}")
    if len(payload) > expected:
        raise bad(f"trailing bytes after the {expected} data bytes of shape {dims}")
    return np.frombuffer(payload, dtype=dtype).reshape(dims)


def _read_upto(f: BinaryIO, n: int) -> bytes:
    """Read at most ``n`` bytes in chunks, so memory follows the data actually present."""
    chunks = []
    while n > 0 and (chunk := f.read(min(n, CHUNK))):
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _check_pair(x: np.ndarray, y: np.ndarray, px: Path, py: Path, num_classes: int) -> None:
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{px} must hold uint8 images of 28x28; it holds {x.dtype} {x.shape}.")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise DataError(f"{py} must hold a 1-D uint8 label vector; it holds {y.dtype} {y.shape}.")
    if len(x) != len(y):
        raise DataError(f"{px} has {len(x)} images but {py} has {len(y)} labels; they must match.")
    if y.size and int(y.max()) >= num_classes:
        top = int(y.max())
        raise DataError(f"{py} contains label {top}; labels must be in [0, {num_classes}).")


def _candidates(source: IdxSource, root: Path) -> list[Path]:
    subdirs = [root / d for d in source.dirnames]
    return [root, *subdirs, *(d / "raw" for d in subdirs)]


def _find(source: IdxSource, root: Path) -> list[Path] | None:
    """The four files (plain preferred over .gz) from the first directory holding all."""
    for directory in _candidates(source, root):
        found = [_existing(directory / f, directory / f"{f}.gz") for f in FILES]
        if all(p is not None for p in found):
            return found  # type: ignore[return-value]
    return None


def _existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _missing_message(source: IdxSource, root: Path) -> str:
    searched = ", ".join(str(d) for d in _candidates(source, root))
    urls = ", ".join(source.mirrors[0] + f + ".gz" for f in FILES)
    return (
        f"{source.name} not found: expected {', '.join(FILES)} (each plain or .gz) together "
        f"in one of: {searched}. Download {urls} into {root / source.name}, "
        f"or pass download=True."
    )

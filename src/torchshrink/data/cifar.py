"""CIFAR-10 from the official python-version batches, read without trusting pickle.

The official files (https://www.cs.toronto.edu/~kriz/cifar.html) are Python 2 pickles
(protocol 2) of dicts: ``data`` a uint8 array (N, 3072) rebuilt through
``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``;
``labels`` a list of ints; ``batch_label``/``filenames`` strings. Unpickling can run any
callable a file names, so :class:`_RestrictedUnpickler` resolves exactly those three
numpy globals (under numpy 1 and numpy 2 module names) and refuses every other one, and
the loaded value is then checked against the expected structure.
"""

from __future__ import annotations

import io
import pickle  # restricted: see _RestrictedUnpickler; never pickle.load
import pickletools
import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .bundle import DataBundle, make_bundle
from .download import fetch, save_atomic

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of the 50,000 training images
STD = (0.2470, 0.2435, 0.2616)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def load_cifar10_bundle(root: Path, download: bool, limit: int | None) -> DataBundle:
    """Load CIFAR-10 (3x32x32, 10 classes) from ``root/cifar-10-batches-py`` or ``root``."""
    directory = _find(root)
    if directory is None and download:
        _download(root)
        directory = _find(root)
    if directory is None:
        searched = f"{root / BATCH_DIR}, {root}"
        raise DataError(
            f"cifar10 not found: expected {', '.join(FILES)} together in one of: {searched}. "
            f"Download {ARCHIVE_URL} and extract it into {root}, or pass download=True."
        )
    classes = _read_meta(directory / META_FILE)
    train = []
    for file in TRAIN_FILES:  # with a limit, stop once enough samples are read
        train.append(_read_batch(directory / file))
        if limit is not None and sum(len(y) for _, y in train) >= limit:
            break
    x_train, y_train = (np.concatenate(parts) for parts in zip(*train))
    return make_bundle(
        "cifar10",
        (x_train, y_train),
        _read_batch(directory / TEST_FILE),
        scale=255.0,
        mean=MEAN,
        std=STD,
        classes=classes,
        limit=limit,
    )


def read_batch_file(path: Path) -> dict[str, object]:
    """Load one batch/meta file as a dict with str keys, refusing anything unexpected."""
    data = path.read_bytes()
    _check_memo_indices(data, path)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # any failure while decoding untrusted bytes is a bad file
        raise DataError(f"{path} is not a valid CIFAR-10 batch file ({exc}).") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} must hold a dict; it holds {type(obj).__name__}.")
    entries = {}
    for key, value in obj.items():
        key = key.decode("latin1") if isinstance(key, bytes) else key
        if not isinstance(key, str) or not _plain(value):
            kind = type(value).__name__
            raise DataError(f"{path} has an unexpected entry {key!r} of type {kind}.")
        if isinstance(value, np.ndarray) and value.nbytes > len(data):
            raise DataError(f"{path}: array {key!r} holds more bytes than the file; refused.")
        entries[key] = value
    return entries


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the numpy globals an ndarray needs; anything else is a DataError."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"Refusing to load {module}.{name} from a CIFAR-10 file: only the numpy "
                "array globals are allowed. The file is not an official CIFAR-10 batch."
            )
        if name == "_reconstruct":
            return np.empty(0).__reduce__()[0]  # numpy's own reconstructor, any version
        return getattr(np, name)

    def persistent_load(self, pid: object) -> object:
        raise DataError("Refusing a persistent id in a CIFAR-10 file.")


def _check_memo_indices(data: bytes, path: Path) -> None:
    """Reject memo indices no honest pickle uses: CPython sizes the memo by the index."""
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(data), start=1):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > count:
                raise DataError(f"{path} is not a valid CIFAR-10 batch file (memo index {arg}).")
    except DataError:
        raise
    except Exception as exc:  # genops raises ValueError and friends on garbage
        raise DataError(f"{path} is not a valid CIFAR-10 batch file ({exc}).") from exc


def _plain(value: object) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype == np.uint8
    if isinstance(value, list):
        return all(isinstance(v, (int, bytes, str)) for v in value)
    return isinstance(value, (int, bytes, str))


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64) from one data/test batch."""
    batch = read_batch_file(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072).")
    if not isinstance(labels, list) or len(labels) != len(data):
        raise DataError(f"{path}: 'labels' must be a list of {len(data)} ints, one per image.")
    if not all(type(v) is int and 0 <= v < 10 for v in labels):
        raise DataError(f"{path}: 'labels' must hold ints in [0, 10).")
    return data.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


def _read_meta(path: Path) -> tuple[str, ...]:
    names = read_batch_file(path).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{path}: 'label_names' must be a list of the 10 class names.")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def _find(root: Path) -> Path | None:
    candidates = (root / BATCH_DIR, root)
    return next((d for d in candidates if all((d / f).is_file() for f in FILES)), None)


def _download(root: Path) -> None:
    """Fetch the official archive, check its MD5, and extract only the expected files."""
    archive = fetch([ARCHIVE_URL], root / "cifar-10-python.tar.gz", ARCHIVE_MD5)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for file in FILES:
                member = tar.extractfile(f"{BATCH_DIR}/{file}")  # KeyError if absent
                if member is None:
                    raise DataError(f"{archive}: {BATCH_DIR}/{file} is not a regular file.")
                save_atomic(member, root / BATCH_DIR / file)
    except DataError:
        raise
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise DataError(f"Cannot extract {archive} ({exc}); delete it and retry.") from exc
    archive.unlink()

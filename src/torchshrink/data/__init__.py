"""Data sets by name: ``load_data("digits")`` returns a :class:`DataBundle`.

``digits`` (the default) is scikit-learn's bundled 8x8 digits and needs no files.
``mnist``, ``fashion_mnist`` and ``cifar10`` read the official files from ``root``;
they are fetched (with checksums) only when ``download=True``.
"""

from __future__ import annotations

from pathlib import Path

from ..core.params import NON_NEGATIVE_INT, POSITIVE_INT, check
from ..errors import DataError
from .bundle import DataBundle
from .cifar import load_cifar10_bundle
from .digits import load_digits_bundle
from .idx import load_idx_bundle

__all__ = ["DataBundle", "default_root", "list_datasets", "load_data"]

DEFAULT_DATASET = "digits"
_DATASETS = ("cifar10", "digits", "fashion_mnist", "mnist")


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_data`, sorted."""
    return list(_DATASETS)


def default_root() -> Path:
    """Where data files are looked for when ``root`` is None: ``~/.cache/torchshrink/data``."""
    return Path("~/.cache/torchshrink/data").expanduser()


def load_data(
    name: str = DEFAULT_DATASET,
    root: str | Path | None = None,
    *,
    download: bool = False,
    split_seed: int = 0,
    limit: int | None = None,
) -> DataBundle:
    """Load the data set ``name`` as normalized float32 images and int64 labels.

    ``root``: directory of the data files (default :func:`default_root`; unused by digits).
    ``download``: fetch missing files from the official mirrors (never done otherwise).
    ``split_seed``: seeds the digits train/test split (the other sets have fixed splits).
    ``limit``: keep only the first ``limit`` train and first ``limit`` test samples.
    """
    if not isinstance(name, str) or name not in _DATASETS:
        allowed = ", ".join(list_datasets())
        raise DataError(f"Unknown data set {name!r}; available data sets: {allowed}.")
    if limit is not None:
        check(limit, "limit", "load_data", POSITIVE_INT, error=DataError)
    check(split_seed, "split_seed", "load_data", NON_NEGATIVE_INT, error=DataError)
    directory = default_root() if root is None else Path(root).expanduser()
    if name == "digits":
        return load_digits_bundle(split_seed, limit)
    try:
        if name == "cifar10":
            return load_cifar10_bundle(directory, bool(download), limit)
        return load_idx_bundle(name, directory, bool(download), limit)
    except DataError as exc:
        message = str(exc)
        if download or "pass download=True" not in message:
            raise
        raise DataError(message.replace("pass download=True", DOWNLOAD_HINT)) from None


DOWNLOAD_HINT = ("let torchshrink fetch it: download=True in Python, 'data.download: true' in a recipe, "
                 "'--set data.download=true' on the command line (run, sensitivity) or '--download' (eval, bench)")
"""How to allow a download, in every way a user can: the end of a missing-data message."""

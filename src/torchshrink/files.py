"""Writing results safely: atomic files, and one run at a time per output folder.

* :func:`atomic_write` writes a temporary file beside the target, fsyncs it, renames it
  over the target and fsyncs the folder, so a reader sees the old file or the new one,
  never half of one, even across a power cut; an interrupted write leaves no temporary.
* :class:`OutputFolder` holds an exclusive lock (``fcntl.flock`` on ``.torchshrink.lock``)
  on a run's ``--out`` for the run's lifetime: a second run into the same folder is
  refused with the holder's pid instead of silently mixing files. Under the lock it
  clears what an earlier, killed run may have left (temporaries, the previous run's
  ``model.tsk`` and ``report.json``, so no report pairs with another run's model), and a
  run that fails removes its partial results, and the folder itself if it made it and
  nothing else is left there (a failed run's checkpoints stay, for ``--resume``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .errors import TorchshrinkError

LOCK_NAME = ".torchshrink.lock"
#: The files of a finished run; removed when a new run starts and when a run fails.
RESULTS = ("model.tsk", "report.json")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(path: Path) -> Path:
    """The temporary file :func:`atomic_write` uses for ``path`` (same folder, hidden, per process)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | os.PathLike[str], write: bytes | Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write`` is the bytes, or a function that writes a given path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        if isinstance(write, (bytes, bytearray, memoryview)):
            with tmp.open("wb") as fh:
                fh.write(write)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            write(tmp)
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def remove_temps(folder: Path) -> int:
    """Delete the temporaries of :func:`atomic_write` left in ``folder`` and its subfolders."""
    removed = 0
    if folder.is_dir():
        for p in folder.rglob(".*.tmp*"):
            if p.is_file():
                p.unlink()
                removed += 1
    return removed


def check_out_folder(out: Path) -> None:
    """Refuse an output folder that cannot be used, before any work; creates nothing.

    It must be an existing folder, or be creatable: the nearest part of the path that
    exists must be a folder, and that folder writable.
    """
    where = f"output folder {str(out)!r}"
    try:
        if os.path.lexists(out) and not out.is_dir():
            what = "file" if out.is_file() else "link to nothing" if out.is_symlink() and not out.exists() else "entry"
            raise TorchshrinkError(f"{where} is an existing {what}, not a folder; pass --out with a folder path")
        here = out
        while not os.path.lexists(here):  # ends at "." or "/" at the latest
            here = here.parent
        if not here.is_dir():
            raise TorchshrinkError(f"{where} cannot be created: {str(here)!r} is a file, not a folder")
        if not os.access(here, os.W_OK | os.X_OK):
            raise TorchshrinkError(f"{where} is not writable: no permission to write in {str(here)!r}")
    except OSError as e:
        raise TorchshrinkError(f"{where} cannot be used: {e.strerror or e}") from None


class OutputFolder:
    """``with OutputFolder(out):`` -- the run's exclusive hold on its output folder (see module doc)."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.path = Path(out)
        self._fd: int | None = None
        self._made = False

    def __enter__(self) -> OutputFolder:
        p = self.path
        check_out_folder(p)
        try:
            self._made = not p.exists()
            p.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(p / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise TorchshrinkError(f"cannot write to the output folder {str(p)!r}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise TorchshrinkError(f"the output folder {str(p)!r} is in use by another torchshrink run (pid {holder}); "
                                   "wait for it to finish or choose another --out") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        remove_temps(p)
        for name in RESULTS:
            with contextlib.suppress(FileNotFoundError):
                (p / name).unlink()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        p = self.path
        if kind is not None:
            for name in RESULTS:
                with contextlib.suppress(FileNotFoundError):
                    (p / name).unlink()
            remove_temps(p)
        if self._fd is None:
            return
        # The lock file stays (unlinking it would let two later runs lock two different
        # files), except in a folder this run made and is about to remove.
        if kind is not None and self._made and _holds_nothing_but_the_lock(p):
            with contextlib.suppress(OSError):
                (p / LOCK_NAME).unlink()
                _remove_empty(p)
        os.close(self._fd)
        self._fd = None


def _holds_nothing_but_the_lock(folder: Path) -> bool:
    return all(f.name == LOCK_NAME for f in folder.rglob("*") if f.is_file())


def _remove_empty(folder: Path) -> None:
    """Remove ``folder`` and its (empty) subfolders, deepest first."""
    for sub in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        sub.rmdir()
    folder.rmdir()

"""Kernel-or-dense decisions: timing both paths, judging the margin against the noise, caching what is clear.

:mod:`~torchshrink.runtime.dispatch` asks this module, per layer and input shape, which
path to run. A decision is only as good as the timing behind it, and a cache makes a
bad timing last: a decision measured while the machine was loaded (dense BLAS threads
starved, say) kept a layer on its kernel long after dense had become 2-3x faster again.
So:

* :func:`time_paths` times both paths in interleaved rounds and returns, per path, the
  median and the 20th / 80th percentiles;
* :func:`verdict` turns that into a decision with its **margin** (``|ln(kernel/dense)|``
  of the medians) and its **noise** (the mean of the two paths' ``ln(p80/p20)``: how
  wide the middle of each path's timings is); the decision is *clear* when the margin
  exceeds the noise (and :data:`KERNEL_MARGIN`'s 3 %); only a clear decision is cached,
  an unclear one is measured again in the next process;
* a cached decision is re-verified at load by :func:`holds`: :data:`VERIFY_ROUNDS`
  interleaved calls of both paths (the minimum of each, which load can only raise); if
  the path it names is no longer the faster one, the entry is dropped and measured again;
* the cache file records a :func:`stamp` of the software (torch, numba, torchshrink
  versions and the runtime's own source): a file written under another stamp is ignored,
  so a new kernel is never judged by its predecessor's timings.

The cache is one JSON file per machine (:func:`fingerprint`) under
:func:`torchshrink.cache_dir.cache_root`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

PATHS = ("kernel", "dense")
#: The kernel is kept only when its median is at most this fraction of dense's: a tie
#: goes to the decoded dense layer, the reference path.
KERNEL_MARGIN = 0.97
#: Timing budget of one decision (seconds) and its bounds on rounds.
BUDGET_S = 0.02
MIN_ROUNDS, MAX_ROUNDS = 5, 40
#: Timed calls of each path when a cached decision is re-verified at load.
VERIFY_ROUNDS = 3
_CACHE_FORMAT = 4


@functools.cache
def fingerprint() -> str:
    """A short hash naming this machine and its thread counts (one cache file per fingerprint)."""
    import numba

    from ._common import available_cores, start_pool

    start_pool()  # before numba.get_num_threads(), which would start the pool with spinning threads

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:  # pragma: no cover - not Linux
        pass
    parts = [platform.machine(), cpu, str(available_cores()), str(torch.get_num_threads()),
             str(numba.get_num_threads())]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@functools.cache
def stamp() -> str:
    """A short hash of the software the timings depend on: torch, numba, torchshrink and the runtime's source."""
    import numba

    from .. import __version__

    h = hashlib.sha256(f"{torch.__version__}|{numba.__version__}|{__version__}".encode())
    for src in sorted(Path(__file__).parent.glob("*.py")):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def cache_path() -> Path:
    """The JSON file holding this machine's decisions."""
    from ..cache_dir import cache_root

    return cache_root() / f"dispatch-{fingerprint()}.json"


_memory: dict[str, dict[str, Any]] = {}
_loaded_from: list[Path] = []


def _cache() -> dict[str, dict[str, Any]]:
    path = cache_path()
    if not _loaded_from or _loaded_from[0] != path:
        _memory.clear()
        _loaded_from[:] = [path]
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if (doc.get("format") == _CACHE_FORMAT and doc.get("stamp") == stamp()
                    and isinstance(doc.get("entries"), dict)):
                _memory.update({k: v for k, v in doc["entries"].items()
                                if isinstance(v, dict) and v.get("path") in PATHS})
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, an old or a damaged one: measure again
    return _memory


def cached(key: str) -> dict[str, Any] | None:
    """The cached decision for ``key``, or None."""
    return _cache().get(key)


def _write() -> None:
    from ..files import atomic_write

    doc = {"format": _CACHE_FORMAT, "stamp": stamp(), "entries": _cache()}
    try:
        atomic_write(cache_path(), json.dumps(doc, indent=0).encode())
    except OSError:  # pragma: no cover - read-only home: decisions stay in memory
        pass


def store(key: str, entry: dict[str, Any]) -> None:
    """Record one (clear) decision in memory and in the cache file."""
    _cache()[key] = entry
    _write()


def forget(key: str) -> None:
    """Drop ``key``'s decision (it no longer holds, or a new timing was unclear)."""
    if _cache().pop(key, None) is not None:
        _write()


def clear_cache() -> None:
    """Forget every decision of this machine (in memory and on disk)."""
    _memory.clear()
    _loaded_from.clear()
    try:
        cache_path().unlink()
    except OSError:
        pass


def _timed(fn: Any, x: torch.Tensor, samples: list[float]) -> None:
    t0 = time.perf_counter()
    fn(x)
    samples.append((time.perf_counter() - t0) * 1e3)


def _pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank below)."""
    ordered = sorted(samples)
    return ordered[int(q * (len(ordered) - 1))]


def _rounds(kernel: Any, dense: Any, x: torch.Tensor, rounds: int, budget_s: float | None) -> tuple[list, list]:
    """Timed calls of both paths, alternating which goes first so a noisy period hits both alike."""
    k: list[float] = []
    d: list[float] = []
    with torch.inference_mode():
        for fn in (kernel, dense, kernel, dense):  # warm-up (numba compiles on first call)
            fn(x)
        start = time.perf_counter()
        for r in range(rounds):
            first, second = ((kernel, k), (dense, d)) if r % 2 == 0 else ((dense, d), (kernel, k))
            _timed(first[0], x, first[1])
            _timed(second[0], x, second[1])
            if budget_s is not None and r + 1 >= MIN_ROUNDS and time.perf_counter() - start > budget_s:
                break
    return k, d


def time_paths(kernel: Any, dense: Any, x: torch.Tensor) -> dict[str, float]:
    """ms of ``kernel(x)`` and ``dense(x)``: median, 20th and 80th percentile, timed in interleaved rounds.

    The decision compares the medians (``kernel_ms`` / ``dense_ms``: what a caller waits
    on this machine, tails included; a multi-threaded path can have a good 20th
    percentile and a terrible median under load); the percentiles measure the noise.
    """
    k, d = _rounds(kernel, dense, x, MAX_ROUNDS, BUDGET_S)
    return {"kernel_ms": statistics.median(k), "dense_ms": statistics.median(d),
            "kernel_p20_ms": _pct(k, 0.2), "dense_p20_ms": _pct(d, 0.2),
            "kernel_p80_ms": _pct(k, 0.8), "dense_p80_ms": _pct(d, 0.8)}


def verdict(t: dict[str, float]) -> dict[str, Any]:
    """The decision for the timings ``t`` of :func:`time_paths`: path, margin, noise and whether it is clear."""
    tiny = 1e-9
    margin = abs(math.log(max(t["kernel_ms"], tiny) / max(t["dense_ms"], tiny)))
    widths = [math.log(max(t[f"{p}_p80_ms"], tiny) / max(t[f"{p}_p20_ms"], tiny)) for p in PATHS]
    noise = sum(widths) / len(widths)
    path = "kernel" if t["kernel_ms"] <= KERNEL_MARGIN * t["dense_ms"] else "dense"
    clear = margin > max(noise, -math.log(KERNEL_MARGIN))
    return {"path": path, **t, "margin": round(margin, 4), "noise": round(noise, 4), "clear": clear}


def holds(entry: dict[str, Any], kernel: Any, dense: Any, x: torch.Tensor) -> dict[str, Any]:
    """Re-time a cached decision cheaply: ``{"holds", "kernel_ms", "dense_ms"}`` (minimum of a few calls each).

    A kernel decision holds while the kernel is not slower than dense (beyond
    :data:`KERNEL_MARGIN`'s tolerance); a dense decision while the kernel is not clearly
    faster. Load only slows a path down, so a minimum that contradicts the entry is news.
    """
    k, d = _rounds(kernel, dense, x, VERIFY_ROUNDS, None)
    km, dm = min(k), min(d)
    ok = km * KERNEL_MARGIN <= dm if entry["path"] == "kernel" else km >= KERNEL_MARGIN * dm
    return {"holds": ok, "kernel_ms": km, "dense_ms": dm}

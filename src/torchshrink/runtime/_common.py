"""Shared plumbing for the runtime kernels: argument checks, input conversion, threads.

Threads. numba runs ``parallel=True`` kernels on its own OpenMP/TBB/workqueue pool,
separate from torch's intra-op pool, and both default to one thread per visible CPU.
The two pools never run at the same time in one inference (a torch op finishes before a
kernel starts), so sharing the cores is fine as long as neither pool has more threads
than there are cores: a kernel whose threads outnumber the cores waits for the slowest
time slice. :func:`run_kernel` therefore caps numba's thread count for each call at the
CPUs this process may run on (``os.sched_getaffinity``, which honours ``taskset`` and
container cpusets, unlike ``os.cpu_count``) and restores numba's setting afterwards.

Spinning. torch ships its own ``libgomp`` and numba's OpenMP layer loads the system's,
so a process holds two OpenMP pools, and an idle OpenMP thread busy-waits (GOMP's
default spin) before it sleeps. On a loaded machine a kernel's pool then burns the core
that torch's next op waits for (measured here under load: a 2-thread numba kernel
alone 16 ms median instead of 0.03 ms, alternating with a torch matmul 55 ms instead of
0.17 ms). :func:`start_pool` therefore starts numba's pool with
``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once) unless the user set a policy;
the variable is set only while numba's library initializes, so torch's pool and child
processes keep theirs.

Small work runs the kernel's *serial twin* (:func:`serial`: the same Python function
compiled without ``parallel=True``), which never touches numba's thread pool: no pool
wake-up, no ``set_num_threads`` calls (about 3 us of the old per-call overhead), and no
pool threads spinning against torch's after the call. Nothing is changed at import time; set
``NUMBA_NUM_THREADS`` or ``numba.set_num_threads`` to give the kernels fewer threads.
"""

from __future__ import annotations

import functools
import os
import time
import types
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch

from ..core.params import Interval, check
from ..errors import ModelError


#: Below this many inner-loop steps (stored entries x batch rows) a kernel runs on one
#: thread: waking the pool costs ~15 us, more than splitting such work saves.
PARALLEL_MIN_WORK = 100_000


@functools.cache
def available_cores() -> int:
    """CPUs this process may run on (affinity mask where the OS has one), read once."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


#: How often (seconds) :func:`oversubscribed` rereads the load average.
LOAD_CHECK_S = 1.0
_load_seen = [-1e9, False]


def oversubscribed() -> bool:
    """True while more threads want to run than this process has cores (1-minute load average).

    A parallel region then waits for every pool thread to be scheduled, a time slice each
    (measured here at load average 19 on 2 cores: a 2-thread fused MLP at batch 64 took
    57 ms median against 0.1 ms at best), so :func:`run_kernel` runs the serial twin.
    Read at most once per :data:`LOAD_CHECK_S`.
    """
    now = time.monotonic()
    if now - _load_seen[0] > LOAD_CHECK_S:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this OS
            load = 0.0
        _load_seen[:] = [now, load > available_cores()]
    return bool(_load_seen[1])


@functools.cache
def start_pool() -> str:
    """Start numba's thread pool once, with passive waiting (see the module doc); returns its layer."""
    from numba.np.ufunc import parallel

    if "OMP_WAIT_POLICY" in os.environ:
        parallel._launch_threads()
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            parallel._launch_threads()
        finally:
            del os.environ["OMP_WAIT_POLICY"]
    return numba.threading_layer()


@functools.cache
def serial(kernel: Any) -> Any:
    """The serial twin of a ``parallel=True`` numba kernel: its Python function compiled plainly.

    ``prange`` runs as ``range``; the twin gets its own qualified name, so numba's disk
    cache keeps the two compilations apart.
    """
    py = kernel.py_func
    fn = types.FunctionType(py.__code__, py.__globals__, py.__name__ + "_serial", py.__defaults__, py.__closure__)
    fn.__qualname__ = py.__qualname__ + "_serial"
    fn.__doc__ = py.__doc__
    return numba.njit(cache=True, fastmath=True)(fn)


def run_kernel(kernel: Callable[..., Any], work: int, *args: Any) -> None:
    """Call a ``parallel=True`` kernel with a sane thread count, then restore numba's.

    The count is numba's current one (``NUMBA_NUM_THREADS`` or ``numba.set_num_threads``)
    capped at :func:`available_cores`; when ``work < PARALLEL_MIN_WORK``, on one core, or
    while the machine is :func:`oversubscribed`, the serial twin runs instead. Kernels
    that split work themselves receive the count
    as their last argument.
    """
    if work < PARALLEL_MIN_WORK or available_cores() == 1 or oversubscribed():
        serial(kernel)(*args, 1)
        return
    start_pool()
    before = numba.get_num_threads()
    threads = min(before, available_cores())
    if threads == before:
        kernel(*args, threads)
        return
    numba.set_num_threads(threads)
    try:
        kernel(*args, threads)
    finally:
        numba.set_num_threads(before)


def check_int(value: Any, name: str, owner: str, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``, or a :class:`ModelError` naming the fix."""
    return check(value, name, owner, Interval(int, low, high))


def input_matrix(
    x: Any, in_features: int, weight_shape: tuple[int, int], owner: str
) -> tuple[np.ndarray, tuple, torch.dtype]:
    """Flatten an input ``(*, in_features)`` tensor into a float32 numpy ``(batch, in)`` matrix.

    Returns the matrix (a view of ``x``'s storage when it is already a contiguous float32
    CPU tensor, else a copy), the leading shape to restore, and ``x``'s dtype. Floating
    inputs of other precisions are computed in float32 and cast back by the caller.
    """
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"{owner} expects a torch.Tensor input. Got {type(x).__name__}.")
    if x.device.type != "cpu":
        raise ModelError(f"{owner} runs on the CPU only. Got an input on {x.device}; call x.cpu() first.")
    if not x.is_floating_point():
        raise ModelError(f"{owner} expects a floating-point input. Got dtype {x.dtype}; call x.float() first.")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ModelError(
            f"{owner}: input of shape {tuple(x.shape)} does not match weight of shape "
            f"{weight_shape} (out_features x in_features); the input's last dimension "
            f"must be {in_features}."
        )
    return float32_numpy(x).reshape(-1, in_features), tuple(x.shape[:-1]), x.dtype


def float32_numpy(x: torch.Tensor) -> np.ndarray:
    """``x`` as a C-contiguous float32 numpy array: a view when it already is one (no grad), else a copy.

    Each torch call before a kernel costs more than its own microsecond (it evicts the
    kernel launcher's code and branch history), so the common case makes just one.
    """
    if x.dtype == torch.float32 and not x.requires_grad and x.is_contiguous():
        return x.numpy()
    return x.detach().to(torch.float32).contiguous().numpy()


def output_tensor(
    y: np.ndarray, lead: tuple, dtype: torch.dtype, bias: torch.Tensor | None, owner: str
) -> torch.Tensor:
    """Wrap a float32 ``(batch, out)`` result: add ``bias``, restore the leading shape and dtype."""
    n_out = y.shape[1]
    out = torch.from_numpy(y.reshape(*lead, n_out))
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (n_out,):
            got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ModelError(f"{owner}: bias must be a tensor of shape ({n_out},). Got {got}.")
        out += bias.detach().to(device="cpu", dtype=torch.float32)
    return out if dtype == torch.float32 else out.to(dtype)


def frozen(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous, read-only array (kernel weights never change after they are built)."""
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


class MatrixShape:
    """``out_features`` / ``in_features`` of a kernel weight that records its ``shape`` as ``(out, in)``."""

    shape: tuple[int, int]

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

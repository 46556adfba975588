"""The one worker pool: sensor tiles, CNN training pieces and CNN evaluation blocks.

Work is split into tasks whose values depend on the array sizes alone (tiles, row chunks,
column blocks, image blocks); :func:`run_parallel` runs them on :func:`worker_threads`
Python threads (``SENSORLAB_THREADS``, else the usable cores), each taking the next task
from a shared counter, so a slow or busy core takes fewer. Inside a task nothing splits
further (a nested call runs its tasks in turn; :class:`serial_region` does the same for a
caller that already runs one thread per core). While tasks run, the process's BLAS is
limited to one thread (threadpoolctl, reference-counted): one single-threaded GEMM per
thread was measured faster than OpenBLAS's own threads and far more robust on a busy
machine (docs/performance.md), and each task is then computed by the same calls whatever
the number of threads, so results are bit-identical for any thread count.

A forked child (a multiprocessing or Dask worker) starts with no pool and no BLAS limit.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = [
    "THREADS_ENV",
    "run_chunks",
    "run_parallel",
    "serial_region",
    "single_thread_blas",
    "worker_threads",
]

#: Environment variable that sets the number of worker threads (sensor stages and the CNN).
THREADS_ENV = "SENSORLAB_THREADS"

_T = TypeVar("_T")

_local = threading.local()  # .inside: this thread runs a task (or a serial region)
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_blas_users = 0
_blas_limit: Any = None
_blas_controller: Any = None


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: start afresh."""
    global _local, _lock, _pool, _pool_size, _blas_users, _blas_limit, _blas_controller
    _local, _lock, _pool, _pool_size = threading.local(), threading.Lock(), None, 0
    _blas_users, _blas_limit, _blas_controller = 0, None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def worker_threads() -> int:
    """Threads that :func:`run_parallel` uses: ``SENSORLAB_THREADS`` when it is a positive
    integer, else the cores this process may run on."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class single_thread_blas:
    """Context manager: BLAS at one thread in this process while any user is inside
    (threadpoolctl; without it BLAS keeps its threads)."""

    def __enter__(self) -> single_thread_blas:
        global _blas_users, _blas_limit, _blas_controller
        with _lock:
            if _blas_users == 0:
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError:
                    _blas_limit = None
                else:
                    if _blas_controller is None:
                        _blas_controller = ThreadpoolController()
                    _blas_limit = _blas_controller.limit(limits=1, user_api="blas")
            _blas_users += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _blas_users, _blas_limit
        with _lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limit is not None:
                _blas_limit.restore_original_limits()
                _blas_limit = None


class serial_region:
    """Context manager: :func:`run_parallel` called in this thread runs its tasks in turn
    (for callers that already run one thread per core)."""

    def __enter__(self) -> serial_region:
        self._was = getattr(_local, "inside", False)
        _local.inside = True
        return self

    def __exit__(self, *exc: object) -> None:
        _local.inside = self._was


def _helpers(count: int) -> ThreadPoolExecutor:
    """A pool with at least ``count`` threads (made once, grown when asked for more)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < count:
            old = _pool
            _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="sensorlab"), count
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def run_parallel(tasks: Sequence[Callable[[], _T]], threads: int | None = None) -> list[_T]:
    """Run ``tasks`` on ``threads`` threads (the caller's among them), BLAS at one thread.

    Threads take the next task in order until none is left, so the split adapts to the
    load; each task must write only its own output, and then the result does not depend
    on the number of threads. Inside a task (or a :class:`serial_region`) the tasks run in
    turn in the caller's thread. NumPy releases the GIL in its loops and random samplers,
    OpenCV and BLAS in their kernels.

    Parameters
    ----------
    tasks : callables without arguments.
    threads : the most threads to use (default :func:`worker_threads`).

    Returns
    -------
    The tasks' results, in task order. The error of the first failed task (in task order)
    is raised once all have stopped.
    """
    tasks = list(tasks)
    count = min(worker_threads() if threads is None else max(1, int(threads)), len(tasks))
    if getattr(_local, "inside", False):
        count = 1
    results: list[Any] = [None] * len(tasks)
    errors: dict[int, BaseException] = {}
    counter = itertools.count()  # next() is atomic under the GIL

    def drain() -> None:
        with serial_region():
            for k in iter(counter.__next__, None):
                if k >= len(tasks):
                    return
                try:
                    results[k] = tasks[k]()
                except BaseException as err:  # re-raised in the caller's thread
                    errors[k] = err

    with single_thread_blas():
        pool = _helpers(count - 1) if count > 1 else None
        helpers = [pool.submit(drain) for _ in range(count - 1)] if pool else []
        drain()
        for helper in helpers:
            helper.result()
    if errors:
        raise errors[min(errors)]
    return results


def run_chunks(n_chunks: int, fn: Callable[[int], _T]) -> list[_T]:
    """``[fn(0), ..., fn(n_chunks - 1)]`` by :func:`run_parallel` (chunk k's value must
    depend on k alone for the result to be thread-count independent)."""
    return run_parallel([lambda k=k: fn(k) for k in range(n_chunks)])

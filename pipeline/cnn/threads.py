"""Threads for the CNN engine: one place for the worker pool and the BLAS thread limit.

Training (:mod:`pipeline.cnn.functional`) and evaluation (:mod:`pipeline.cnn.fast`) split
work over one Python thread per usable core, each with single-threaded BLAS: measured
faster than one multi-threaded GEMM between single-threaded copies, and far more robust on
a busy machine, where OpenBLAS's spinning threads stall (docs/performance.md). While a
split runs, the process's BLAS is limited to one thread (threadpoolctl, reference-counted
so concurrent users in this process restore it once, at the end). Inside
:class:`serial_region` nothing splits (for callers that already run one thread per core).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_parts", "serial_region", "single_thread_blas", "split_rows", "usable_cpus"]


_T = TypeVar("_T")
_state = threading.local()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_blas_users = 0
_blas_limit: Any = None
_blas_controller: Any = None


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: start afresh."""
    global _pool, _pool_lock, _blas_users, _blas_limit, _blas_controller, _state
    _pool, _pool_lock, _state = None, threading.Lock(), threading.local()
    _blas_users, _blas_limit, _blas_controller = 0, None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def usable_cpus() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class single_thread_blas:
    """Context manager: BLAS at one thread in this process while any user is inside."""

    def __enter__(self) -> single_thread_blas:
        global _blas_users, _blas_limit, _blas_controller
        with _pool_lock:
            if _blas_users == 0:
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError:  # without threadpoolctl BLAS keeps its threads
                    _blas_limit = None
                else:
                    if _blas_controller is None:
                        _blas_controller = ThreadpoolController()
                    _blas_limit = _blas_controller.limit(limits=1, user_api="blas")
            _blas_users += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _blas_users, _blas_limit
        with _pool_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limit is not None:
                _blas_limit.restore_original_limits()
                _blas_limit = None


class serial_region:
    """Context manager: functions called in this thread do not split over threads
    (for callers that already run one thread per core)."""

    def __enter__(self) -> serial_region:
        self._was = getattr(_state, "inside", False)
        _state.inside = True
        return self

    def __exit__(self, *exc: object) -> None:
        _state.inside = self._was


def split_rows(total: int, fn: Callable[[int, int], _T], min_rows: int) -> list[_T]:
    """fn over [0, total) split in contiguous parts, one per core, results in order."""
    global _pool
    parts = min(usable_cpus(), max(1, total // max(1, min_rows)))
    if parts == 1 or getattr(_state, "inside", False):
        return [fn(0, total)]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(usable_cpus(), thread_name_prefix="sensorlab-cnn")
    bounds = [total * k // parts for k in range(parts + 1)]

    def part(k: int) -> _T:
        with serial_region():
            return fn(bounds[k], bounds[k + 1])

    with single_thread_blas():
        futures = [_pool.submit(part, k) for k in range(1, parts)]
        first = part(0)
        return [first, *(f.result() for f in futures)]


def run_parts(fns: Sequence[Callable[[], Any]]) -> None:
    """Run each of ``fns`` in its own thread (the first in the caller's), with BLAS at one
    thread and nothing splitting further inside; re-raises the first error."""
    errors: list[BaseException] = []

    def work(fn: Callable[[], Any]) -> None:
        try:
            with serial_region():
                fn()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    with single_thread_blas():
        ts = [threading.Thread(target=work, args=(fn,)) for fn in fns[1:]]
        for t in ts:
            t.start()
        work(fns[0])
        for t in ts:
            t.join()
    if errors:
        raise errors[0]


def run_chunks(n_chunks: int, fn: Callable[[int], _T]) -> list[_T]:
    """``[fn(0), ..., fn(n_chunks - 1)]``, computed by one Python thread per usable core.

    Threads take the next chunk from a shared counter (a slow or busy core takes fewer),
    and BLAS runs single-threaded, also when only one thread runs: each chunk is then
    computed by the same calls whatever the number of threads, so results that depend on
    the chunk index alone are bit-identical for any thread count (the reproducible
    training of :mod:`pipeline.cnn.functional` relies on it). Inside
    :class:`serial_region` the chunks run in the caller's thread.
    """
    import itertools

    global _pool
    results: list[Any] = [None] * n_chunks
    parts = min(usable_cpus(), n_chunks)
    if getattr(_state, "inside", False):
        parts = 1
    counter = itertools.count()

    def work() -> None:
        with serial_region():
            while (k := next(counter)) < n_chunks:
                results[k] = fn(k)

    with single_thread_blas():
        if parts <= 1:
            work()
            return results
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(usable_cpus(), thread_name_prefix="sensorlab-cnn")
        futures = [_pool.submit(work) for _ in range(parts - 1)]
        try:
            work()
        finally:
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        return results


__all__ += ["run_chunks"]

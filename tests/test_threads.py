"""The one worker pool (pipeline.threads): thread count, BLAS limit, nesting, fork."""

import os
import threading

import numpy as np
import pytest

from pipeline import stage, threads


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_stage_reexports_the_one_pool():
    assert stage.run_parallel is threads.run_parallel
    assert stage.worker_threads is threads.worker_threads
    assert stage.THREADS_ENV == threads.THREADS_ENV == "SENSORLAB_THREADS"


@pytest.mark.parametrize("count", ["1", "2"])
def test_blas_runs_single_threaded_inside_tasks_and_is_restored(monkeypatch, count):
    monkeypatch.setenv(threads.THREADS_ENV, count)
    before = _blas_threads()
    inside = threads.run_parallel([_blas_threads] * 4)
    assert all(n == [1] * len(before) for n in inside)
    assert _blas_threads() == before


def test_explicit_thread_count_uses_that_many_threads(monkeypatch):
    """``threads=`` overrides SENSORLAB_THREADS (the compiled CNN's own ``threads``)."""
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    barrier = threading.Barrier(3, timeout=30)  # passes only if 3 tasks run at once
    names = threads.run_parallel([lambda: (barrier.wait(), threading.get_ident())[1]] * 3, 3)
    assert len(set(names)) == 3


def test_serial_region_and_nested_calls_stay_in_the_callers_thread(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "4")
    me = threading.get_ident()
    with threads.serial_region():
        assert threads.run_chunks(6, lambda k: threading.get_ident()) == [me] * 6
    nested = threads.run_parallel(
        [
            lambda: (
                {threading.get_ident()}
                == set(threads.run_chunks(5, lambda k: threading.get_ident()))
            )
        ]
        * 3
    )
    assert nested == [True] * 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_fresh_pool(monkeypatch):
    import multiprocessing

    monkeypatch.setenv(threads.THREADS_ENV, "2")
    expected = threads.run_chunks(8, lambda k: float(np.square(k)))  # starts the parent's pool
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(
        target=lambda: queue.put(threads.run_chunks(8, lambda k: float(np.square(k))))
    )
    child.start()
    assert queue.get(timeout=60) == expected
    child.join(timeout=60)
    assert child.exitcode == 0

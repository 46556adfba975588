"""bench/train_gil.py: the probe wraps the engine's chunk kernels and puts them back; the
batch shares; a small run of both measurements."""

from __future__ import annotations

import itertools
import os

import pytest

from bench import train_gil
from pipeline.cnn import functional


def test_shares_cover_the_batch_in_near_equal_contiguous_parts():
    for batch, parts in [(64, 2), (7, 2), (5, 3), (1, 1)]:
        got = train_gil.shares(batch, parts)
        assert got[0].start == 0 and got[-1].stop == batch
        assert all(a.stop == b.start for a, b in itertools.pairwise(got))
        sizes = [s.stop - s.start for s in got]
        assert max(sizes) - min(sizes) <= 1


def test_probe_counts_every_chunk_kernel_call_and_restores_the_kernels():
    originals = [getattr(functional, name) for name in train_gil.CHUNK_KERNELS]
    counter = itertools.count()
    step = train_gil.make_step(batch=2, seed=0)
    with pytest.raises(RuntimeError), train_gil.probed_chunks(1.0, counter):
        assert [getattr(functional, n) for n in train_gil.CHUNK_KERNELS] != originals
        step()
        calls = next(counter)
        raise RuntimeError("restored even so")
    assert [getattr(functional, name) for name in train_gil.CHUNK_KERNELS] == originals
    # the bench net's four convolutions: one forward chunk or more each, and their
    # backward chunks (the first layer's input gradient is not asked for)
    assert calls >= 4 + 4


def test_price_of_python_reports_the_python_it_added():
    step = train_gil.make_step(batch=2, seed=0)
    r = train_gil.price_of_python(step, us=200.0, pairs=2)
    assert r["chunks"] >= 8
    assert r["python_s"] == pytest.approx(r["chunks"] * 200e-6)
    assert r["plain_s"] > 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_the_split_over_processes_runs_and_reports_each_side():
    r = train_gil.without_shared_gil(batch=4, seed=0, pairs=1, threads=2)
    assert r["processes"] == 2 and r["shares"] == [2, 2]
    assert min(r["together_s"], r["alone_s"], r["threads_s"]) > 0
    assert r["threads_over_processes"] > 0

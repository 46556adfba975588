"""The task engine (in-process, local Dask cluster), its per-process cache, the sweep's
cell groups and the dataset snapshot a worker keeps between cells."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.datasets.procedural import ProceduralDataset
from pipeline.errors import UserError
from pipeline.sweep import dask_engine
from pipeline.sweep.cell import CellTask
from pipeline.sweep.dask_engine import Engine, cached, clear_cache, run_tasks
from pipeline.sweep.engine import GROUPS_PER_SLOT, cell_groups
from pipeline.sweep.reuse import SnapshotDataset, cell_dataset, cell_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_cache()
    yield
    clear_cache()


# --------------------------------------------------------------------------- cache
def test_cached_builds_once_per_key_and_drops_the_oldest_past_its_budget(monkeypatch):
    built: list[str] = []

    def build(name: str):
        return lambda: built.append(name) or name.upper()

    assert cached("a", build("a")) == "A" and cached("a", build("a")) == "A"
    assert built == ["a"]
    monkeypatch.setattr(dask_engine, "CACHE_BYTES", 100)
    cached("b", build("b"), nbytes=lambda v: 60)
    cached("c", build("c"), nbytes=lambda v: 60)  # 120 bytes > 100: "a" then "b" go
    cached("c", build("c"))
    cached("a", build("a"))
    assert built == ["a", "b", "c", "a"]
    monkeypatch.setattr(dask_engine, "CACHE_ENTRIES", 2)
    for key in "xyz":
        cached(key, build(key))
    cached("y", build("y"))  # the two newest (y, z) are kept, x went
    cached("x", build("x"))
    assert built[4:] == ["x", "y", "z", "x"]


# --------------------------------------------------------------------------- engines
def _pid_and_hits(value: int) -> tuple[int, int, int]:
    """(value², this process's id, how often this process's cache built its counter)."""
    counter = cached("test-counter", lambda: [0])
    counter[0] += 1
    return value * value, os.getpid(), counter[0]


def test_in_process_engine_runs_tasks_in_order_here():
    results = run_tasks(_pid_and_hits, [3, 1, 2])
    assert [r[0] for r in results] == [9, 1, 4]
    assert {r[1] for r in results} == {os.getpid()}
    assert [r[2] for r in results] == [1, 2, 3]  # one cache, kept between tasks


@pytest.mark.slow  # a cluster's start and stop; the sweep tests run one by default
def test_local_cluster_runs_tasks_on_workers_that_keep_their_cache():
    results = run_tasks(_pid_and_hits, list(range(12)), workers=2)
    assert [r[0] for r in results] == [v * v for v in range(12)]
    pids = {r[1] for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    for pid in pids:  # each worker built its counter once and kept it between tasks
        hits = sorted(r[2] for r in results if r[1] == pid)
        assert hits == list(range(1, len(hits) + 1))


def test_engine_refuses_two_engines_and_reports_a_scheduler_it_cannot_reach(monkeypatch):
    with pytest.raises(UserError, match="give --workers or --scheduler, not both"):
        Engine(2, "tcp://127.0.0.1:9")
    import distributed

    def refuse(address, **kwargs):
        raise OSError("refused")

    monkeypatch.setattr(distributed, "Client", refuse)
    engine = Engine(scheduler="tcp://127.0.0.1:9").start()
    with pytest.raises(UserError, match="cannot connect to the Dask scheduler at tcp://127"):
        engine.ready()
    engine.close()
    assert Engine().kind == "in-process" and Engine().slots == 1


# --------------------------------------------------------------------------- groups
def _task(i: int, dataset: int) -> CellTask:
    return CellTask(
        cell_id=f"c{i:03d}",
        index=i,
        overrides={},
        raw={"dataset": {"kind": "procedural", "seed": dataset}, "model": None},
        base_file="base.yaml",
        base_dir=".",
        models_dir="models",
        train="none",
        snr=None,
        fingerprint={},
    )


@pytest.mark.parametrize(("n", "slots"), [(81, 2), (10, 2), (5, 4), (7, 1)])
def test_cell_groups_are_small_keep_shared_inputs_together_and_cover_every_cell(n, slots):
    tasks = [_task(i, dataset=i % 2) for i in range(n)]
    groups = cell_groups(tasks, slots)
    assert sorted(t.index for g in groups for t in g) == list(range(n))
    size = 1 if slots == 1 else math.ceil(n / (GROUPS_PER_SLOT * slots))
    assert max(len(g) for g in groups) == size
    for g in groups:  # a group's cells share their dataset, in cell order
        assert len({t.raw["dataset"]["seed"] for t in g}) == 1
        assert [t.index for t in g] == sorted(t.index for t in g)


# --------------------------------------------------------------------------- snapshot
def test_snapshot_reads_what_its_source_reads():
    source = ProceduralDataset(n=30, split="val", seed=3, encoding="linear16")
    snap = SnapshotDataset(source)
    assert len(snap) == 30 and snap.nbytes == 30 * 32 * 32 * 3 * 2 + 30 * 8
    for lo, hi in ((0, 30), (7, 19), (29, 30), (5, 5)):
        for got, want in zip(snap.read(lo, hi), source.read(lo, hi), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(snap.image_keys(lo, hi), source.image_keys(lo, hi))
    assert snap.info() == source.info() and snap.class_names == source.class_names
    with pytest.raises(IndexError):
        snap.read(0, 31)
    snap.read(0, 4)[0][...] = 0  # a caller may write into what it read
    np.testing.assert_array_equal(snap.read(0, 4)[0], source.read(0, 4)[0])


def test_cell_dataset_and_model_are_kept_for_one_sweep_run_only(monkeypatch):
    loaded = load_config(ROOT / "configs" / "default.yaml", ["dataset.n=20"])
    first = cell_dataset(loaded, "run-1")
    assert isinstance(first, SnapshotDataset) and cell_dataset(loaded, "run-1") is first
    assert cell_dataset(loaded, "run-2") is not first
    assert not isinstance(cell_dataset(loaded, ""), SnapshotDataset)
    import pipeline.sweep.reuse as reuse

    monkeypatch.setattr(reuse, "SNAPSHOT_BYTES", 1000)  # too large: read from the source
    assert not isinstance(cell_dataset(loaded, "run-3"), SnapshotDataset)
    model = cell_model(loaded, "run-1")
    assert cell_model(loaded, "run-1") is model and cell_model(loaded, "run-2") is not model
    assert cell_model(load_config(ROOT / "configs" / "default.yaml", ["model=null"]), "x") is None

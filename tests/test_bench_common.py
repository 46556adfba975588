"""The benchmarks' shared harness (bench/common.py): the statistic, the pairs' order and
the --blas-env environments."""

import numpy as np

from bench.common import Pairs, blas_env, interleaved, without_options


def test_ratio_is_the_median_of_the_pairs_ratios_not_the_ratio_of_medians():
    ours = np.array([1.0, 2.0, 4.0])
    theirs = np.array([3.0, 2.0, 4.0])  # per-pair ratios 3, 1, 1
    pairs = Pairs(ours, theirs, ours, theirs)
    assert pairs.ratio == 1.0
    assert pairs.theirs_median_s / pairs.ours_median_s == 1.5
    assert np.isnan(Pairs(ours, np.array([]), ours, np.array([])).ratio)


def test_pairs_alternate_which_side_runs_first():
    calls = []
    pairs = interleaved(lambda: calls.append("ours"), lambda: calls.append("theirs"), 4)
    assert calls == ["ours", "theirs", "theirs", "ours"] * 2
    assert len(pairs) == 4 and len(pairs.theirs_s) == 4
    alone = interleaved(lambda: calls.append("ours"), None, 3)
    assert len(alone) == 3 and len(alone.theirs_s) == 0


def test_warm_pairs_time_each_call_after_a_call_of_its_own_side():
    calls = []

    def side(name):
        def call():
            calls.append(name)
            if name == "theirs" and len(calls) % 2 == 0:  # the timed call of theirs
                import time

                time.sleep(0.003)

        return call

    pairs = interleaved(side("ours"), side("theirs"), 2, warm=True)
    assert calls == ["ours", "ours", "theirs", "theirs", "theirs", "theirs", "ours", "ours"]
    assert len(pairs) == 2 and (pairs.theirs_s >= 0.003).all()


def test_blas_env_free_removes_only_the_openblas_variables(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    monkeypatch.setenv("SENSORLAB_BENCH_PROBE", "kept")
    free = blas_env("free")
    assert "OPENBLAS_CORETYPE" not in free and "OPENBLAS_L2_SIZE" not in free
    assert free["SENSORLAB_BENCH_PROBE"] == "kept"
    assert blas_env("haswell") is None  # already set: no re-execution
    assert blas_env("machine") is None
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.delenv("OPENBLAS_L2_SIZE")
    assert blas_env("free") is None
    haswell = blas_env("haswell")
    assert haswell["OPENBLAS_CORETYPE"] == "Haswell" and haswell["OPENBLAS_L2_SIZE"] == "512"


def test_without_options_drops_flags_and_valued_options():
    argv = ["--all-envs", "--pairs", "3", "--blas-env", "free", "--json", "--blas-env=haswell"]
    assert without_options(argv, ("--all-envs", "--json"), ("--blas-env",)) == ["--pairs", "3"]


def test_gemm_floor_counts_the_flops_and_takes_cpu_time():
    from bench.common import Gemm, gemm_floor

    cpu_s, gflop = gemm_floor([Gemm(2, 64, 32, 16), Gemm(1, 8, 8, 8)], reps=1)
    assert gflop == (2 * 2 * 64 * 32 * 16 + 2 * 8 * 8 * 8) / 1e9
    assert cpu_s >= 0.0


def test_net_gemms_hold_the_benchmark_nets_flops():
    """Forward: 2·P·9C·F per 3×3 conv, P the flat layout's rows (each padded image row
    and the row between images: (size + 1)² per image) in near-equal chunks, plus
    the dense layers; training adds the weight gradient everywhere and the input gradient
    everywhere but the input layer."""
    from bench.cnn import CHANNELS, CLASSES, HIDDEN, SIZE_PX, net_gemms

    batch, chunk = 64, 2048
    convs = []
    for k in range(4):
        size = SIZE_PX if k < 2 else SIZE_PX // 2
        rows = batch * (size + 1) ** 2
        chunks = -(-rows // chunk)
        pixels = chunks * -(-rows // chunks)
        convs.append(2 * pixels * 9 * CHANNELS[k] * CHANNELS[k + 1])
    dense = 2 * batch * (CHANNELS[-1] * (SIZE_PX // 4) ** 2 * HIDDEN + HIDDEN * CLASSES)
    forward = sum(g.flop for g in net_gemms(batch, train=False, chunk_rows=chunk))
    assert forward == sum(convs) + dense
    grouped = net_gemms(batch, train=False, chunk_rows=chunk, small_groups=True)
    assert sum(g.flop for g in grouped) == forward
    # training: the engine's own chunks, which split the rows exactly
    exact = [
        2 * batch * (s + 1) ** 2 * 9 * CHANNELS[k] * CHANNELS[k + 1]
        for k, s in enumerate([SIZE_PX] * 2 + [SIZE_PX // 2] * 2)
    ]
    for small in (False, True):
        train = sum(g.flop for g in net_gemms(batch, train=True, small_groups=small))
        assert train == 3 * sum(exact) - exact[0] + 3 * dense
    split = net_gemms(batch, train=True, small_groups=True)
    assert max(g.m * g.k * g.n for g in split[:-6]) <= 100**3  # convolutions: small GEMMs


def test_thread_waits_account_for_every_thread_of_every_region(monkeypatch):
    """bench.train's "where a step's time goes": the top-level parallel regions of a step
    (also those called through a module that imported run_parallel; nested ones run in
    a task and are not regions), each thread's time in them split into tasks and waits
    that add up to threads x the regions' wall time, the rest of the step serial; and
    run_parallel restored afterwards."""
    import time

    from bench.common import thread_waits
    from pipeline import stage, threads

    monkeypatch.setenv(threads.THREADS_ENV, "2")
    original = threads.run_parallel

    def nap(s: float = 0.002) -> None:
        time.sleep(s)

    def step() -> None:
        nap(0.005)  # serial
        threads.run_chunks(3, lambda k: threads.run_parallel([nap, nap]))  # nested inside
        stage.run_parallel([nap])  # one task: the other thread waits it out

    w = thread_waits(step, 1)
    assert w.regions == 2
    parts = w.busy + w.start + w.end + w.between
    assert np.isclose(parts, 2 * w.region_wall, rtol=1e-9, atol=1e-9)
    assert w.busy >= 3 * 2 * 0.002 + 0.002 and w.start >= 0.002
    assert w.serial >= 0.005 and np.isclose(w.serial + w.region_wall, w.step)
    assert len(w.lines(2)) == 2
    assert threads.run_parallel is original and stage.run_parallel is original

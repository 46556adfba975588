"""The benchmarks' one harness: interleaved pairs, the environment header, ``--blas-env``.

Every benchmark times two sides in one process as interleaved pairs (ours, theirs; which
runs first alternates from pair to pair), so both see the same background load. The
statistic is the median over the pairs of (their time / our time), printed with each
side's median time and CPU time (all threads of the process: the work, which a busy
machine disturbs less than the wall time). Where one side's threads outlast its call
(PyTorch's OpenMP threads spin after a training step), the pairs are *warm*: each
timed call follows an untimed call of its own side (:func:`interleaved`).

Every benchmark prints the same header (:func:`print_header`): Python and NumPy, each
BLAS loaded (library, version, kernel/architecture, threads; threadpoolctl), the
OPENBLAS_* variables and ``--blas-env``, sensorlab's worker threads (``SENSORLAB_THREADS``)
and the cores, and the load average; and the load again at the end (:func:`load_line`).

``--blas-env`` (:func:`add_blas_env`, :func:`apply_blas_env`): OpenBLAS picks its kernel
when it loads, so a different setting re-executes the benchmark with the same command line:

- ``free`` (default): OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from the benchmark's
  own environment (nothing else changes), so OpenBLAS picks its kernel as on users' machines;
- ``haswell``: OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512 (some machines here);
- ``machine``: the environment as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/x.py`: the repository's pipeline
    sys.path.insert(0, str(ROOT))

from pipeline.threads import THREADS_ENV, worker_threads  # noqa: E402

BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
BLAS_ENVS: dict[str, dict[str, str]] = {
    "free": {},
    "haswell": {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"},
}
BLAS_ENV_ARG = "--blas-env"


# -- timing ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Times (s) of interleaved pairs: wall and process CPU time of each side per pair.

    ``theirs_s`` and ``theirs_cpu_s`` are empty when only our side ran.
    """

    ours_s: np.ndarray
    theirs_s: np.ndarray
    ours_cpu_s: np.ndarray
    theirs_cpu_s: np.ndarray

    def __len__(self) -> int:
        return len(self.ours_s)

    @property
    def ratio(self) -> float:
        """Median over the pairs of (their time / our time): how many times faster ours is;
        NaN when only our side ran."""
        if not len(self.theirs_s):
            return float("nan")
        return float(np.median(self.theirs_s / self.ours_s))

    @property
    def ours_median_s(self) -> float:
        return float(np.median(self.ours_s))

    @property
    def theirs_median_s(self) -> float:
        return float(np.median(self.theirs_s)) if len(self.theirs_s) else float("nan")

    def lines(self, ours: str, theirs: str) -> list[str]:
        """The standard report: each side's median wall and CPU ms, and the ratio."""
        w = max(len(ours), len(theirs))
        rows = [(ours, self.ours_s, self.ours_cpu_s)]
        if len(self.theirs_s):
            rows.append((theirs, self.theirs_s, self.theirs_cpu_s))
        out = [
            f"  {name:{w}s} {1e3 * np.median(t):9.1f} ms  (CPU {1e3 * np.median(c):9.1f} ms, "
            "all threads)"
            for name, t, c in rows
        ]
        if len(self.theirs_s):
            out.append(
                f"  ratio {self.ratio:.2f}× = median over {len(self)} interleaved pairs of "
                f"{theirs} time / {ours} time (ratio of medians "
                f"{self.theirs_median_s / self.ours_median_s:.2f}×)"
            )
        return out


WARM_NOTE = "  pairs: each timed call follows an untimed call of its own side (warm=True)"
"""What a benchmark that times warm pairs prints under its ratio."""


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def interleaved(
    ours: Callable[[], object],
    theirs: Callable[[], object] | None,
    pairs: int,
    *,
    warm: bool = False,
) -> Pairs:
    """Time ``pairs`` interleaved calls of ``ours`` and ``theirs`` (None: ours alone); pair
    k runs ours first when k is even, theirs first when odd. ``warm``: each timed call
    follows an untimed call of the same side, so it starts from that side's own steady
    state, as in a loop of its calls, not from the other side's (bench.train: PyTorch's
    OpenMP threads spin for a few ms after its step, on the cores our next step needs).
    A benchmark that uses it prints :data:`WARM_NOTE`."""
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "theirs": []}
    for k in range(pairs):
        order = ("ours", "theirs") if k % 2 == 0 else ("theirs", "ours")
        for side in order:
            fn = ours if side == "ours" else theirs
            if fn is not None:
                if warm:
                    fn()
                times[side].append(timed(fn))
    a = np.array(times["ours"], dtype=float).reshape(-1, 2)
    b = np.array(times["theirs"], dtype=float).reshape(-1, 2)
    return Pairs(a[:, 0], b[:, 0], a[:, 1], b[:, 1])


@dataclasses.dataclass(frozen=True)
class Gemm:
    """``count`` float32 GEMMs ``(m, k) @ (k, n)``: one shape of an engine's work."""

    count: int
    m: int
    k: int
    n: int

    @property
    def flop(self) -> float:
        return 2.0 * self.count * self.m * self.k * self.n


def gemm_floor(gemms: Sequence[Gemm], reps: int = 3) -> tuple[float, float]:
    """(CPU s, GFLOP) of ``gemms`` as sgemm calls of this process's BLAS on one core
    (threads limited to 1; the least of ``reps`` runs per shape).

    The floor under any engine whose work is these GEMMs on this BLAS: an engine using
    ``T`` cores needs at least this CPU time, whatever it does around them.
    """
    from threadpoolctl import threadpool_limits

    cpu_s, rng = 0.0, np.random.default_rng(0)
    with threadpool_limits(1):
        for g in gemms:
            # stacked calls (as the engine runs its small GEMMs) of at most 1 MiB of left
            # operands (a chunk's, in cache), so Python's loop adds little to thousands
            stack = max(1, min(g.count, (1 << 20) // (4 * g.m * g.k)))
            a = rng.random((stack, g.m, g.k), dtype=np.float32)
            b = rng.random((g.k, g.n), dtype=np.float32)
            out = np.empty((stack, g.m, g.n), np.float32)
            np.matmul(a, b, out=out)
            calls = [stack] * (g.count // stack) + [g.count % stack] * (g.count % stack > 0)

            def run(
                a: np.ndarray = a, b: np.ndarray = b, out: np.ndarray = out, calls: list = calls
            ) -> None:
                for n in calls:
                    np.matmul(a[:n], b, out=out[:n])

            cpu_s += min(timed(run)[1] for _ in range(reps))
    return cpu_s, sum(g.flop for g in gemms) / 1e9


def ceiling_line(
    gemm_cpu_s: float, gflop: float, theirs: str, theirs_cpu_s: float, what: str = "step"
) -> str:
    """The printed ceiling: our GEMMs' floor (:func:`gemm_floor`) for one ``what`` (a
    training step, an inference batch) against the other side's whole CPU time for it."""
    return (
        f"  ceiling: the {what}'s GEMMs ({gflop:.2f} GFLOP) alone take {1e3 * gemm_cpu_s:.1f} ms "
        f"CPU on one core of this BLAS ({gflop / gemm_cpu_s:.0f} GFLOP/s); {theirs} took "
        f"{1e3 * theirs_cpu_s:.1f} ms CPU, so an engine whose work is these sgemm calls "
        f"passes {theirs_cpu_s / gemm_cpu_s:.2f}× only with nothing else to do"
    )


# -- where the threads wait ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ThreadWaits:
    """Where the time of a step run on :func:`pipeline.threads.run_parallel` goes, medians
    over steps (seconds a step): ``serial``, the caller's thread alone between parallel
    regions; ``regions`` of them, ``region_wall`` long in all; in those, thread-seconds
    ``busy`` in tasks, ``start`` waited before a thread's first task (all the region for
    a thread that took none), ``end`` waited after its last one until the region
    returned, ``between`` between tasks: they add up to threads x ``region_wall``."""

    step: float
    serial: float
    regions: int
    region_wall: float
    busy: float
    start: float
    end: float
    between: float

    def lines(self, threads: int) -> list[str]:
        ms = {k: 1e3 * v for k, v in dataclasses.asdict(self).items()}
        return [
            f"where a step's {ms['step']:.1f} ms go on {threads} threads (median of steps, "
            "ms): the caller alone between parallel regions "
            f"{ms['serial']:.1f}; {self.regions} regions {ms['region_wall']:.1f}",
            f"  in the regions, of {threads} x {ms['region_wall']:.1f} thread-ms: tasks "
            f"{ms['busy']:.1f}, waiting for a first task {ms['start']:.1f}, after the last "
            f"one {ms['end']:.1f}, between tasks {ms['between']:.1f}",
        ]


def thread_waits(step: Callable[[], object], reps: int) -> ThreadWaits:
    """:class:`ThreadWaits` of ``reps`` calls of ``step``, every top-level
    ``run_parallel`` call (by any module that imported it) timed per task."""
    import threading

    from pipeline import threads

    original = threads.run_parallel
    regions: list[tuple[float, float, list]] = []

    def traced(tasks: Sequence[Callable[[], object]], n: int | None = None) -> list:
        if getattr(threads._local, "inside", False):  # nested: runs in turn, in a task
            return original(tasks, n)
        spans: list = [None] * len(tasks)

        def timed(k: int, task: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                t0 = time.perf_counter()
                out = task()
                spans[k] = (threading.get_ident(), t0, time.perf_counter())
                return out

            return run

        t0 = time.perf_counter()
        out = original([timed(k, t) for k, t in enumerate(tasks)], n)
        regions.append((t0, time.perf_counter(), spans))
        return out

    modules = [
        m for m in list(sys.modules.values()) if getattr(m, "run_parallel", None) is original
    ]
    per_step = []
    for m in modules:
        m.run_parallel = traced
    try:
        for _ in range(reps):
            regions.clear()
            s0 = time.perf_counter()
            step()
            s1 = time.perf_counter()
            count = worker_threads()
            row = dict.fromkeys(("serial", "region_wall", "busy", "start", "end", "between"), 0.0)
            row["serial"] = s1 - s0 - sum(t1 - t0 for t0, t1, _ in regions)
            for t0, t1, spans in regions:
                row["region_wall"] += t1 - t0
                by_thread: dict[int, list] = {}
                for ident, a, b in spans:
                    by_thread.setdefault(ident, []).append((a, b))
                for runs in by_thread.values():
                    runs.sort()
                    row["busy"] += sum(b - a for a, b in runs)
                    row["start"] += runs[0][0] - t0
                    row["end"] += t1 - runs[-1][1]
                    row["between"] += sum(c - b for (_, b), (c, _) in itertools.pairwise(runs))
                row["start"] += (count - len(by_thread)) * (t1 - t0)  # took no task
            per_step.append((s1 - s0, len(regions), row))
    finally:
        for m in modules:
            m.run_parallel = original
    med = {k: float(np.median([r[k] for *_, r in per_step])) for k in per_step[0][2]}
    step_s = float(np.median([s for s, _, _ in per_step]))
    return ThreadWaits(step_s, regions=per_step[0][1], **med)


# -- environment -------------------------------------------------------------------------


def blas_libraries() -> list[dict]:
    """Library, version, kernel (architecture), threads and file of each BLAS loaded."""
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: i.get(k) for k in keys} for i in threadpool_info() if i["user_api"] == "blas"]


def load_average() -> tuple[float, float, float]:
    """1-, 5- and 15-minute load averages (NaN where the OS has none)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return (float("nan"),) * 3


def environment() -> dict:
    """What the header prints, as a JSON-able dict (a ``--json`` result carries it)."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_libraries(),
        "blas_vars": {k: os.environ.get(k) for k in BLAS_VARS},
        "threads_env": os.environ.get(THREADS_ENV),
        "worker_threads": worker_threads(),
        "cores": os.cpu_count(),
        "load": load_average(),
    }


def header_lines(env: dict) -> list[str]:
    """The standard header of :func:`environment`'s dict."""
    lines = [
        f"python {env['python']}, numpy {env['numpy']}, sensorlab worker threads "
        f"{env['worker_threads']} ({THREADS_ENV}={env['threads_env'] or 'unset'}), "
        f"cores {env['cores']}"
    ]
    for b in env["blas"] or [{}]:
        if not b:
            lines.append("BLAS: none loaded")
            continue
        lines.append(
            f"BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
            f"{b['num_threads']} threads ({Path(b['filepath']).name})"
        )
    lines.append(
        "BLAS env: " + ", ".join(f"{k}={v or 'unset'}" for k, v in env["blas_vars"].items())
    )
    lines.append(load_line(env["load"]))
    return lines


def load_line(load: Sequence[float] | None = None) -> str:
    """``load average (1, 5, 15 min): ...`` now, or of ``load``."""
    values = load_average() if load is None else load
    return "load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in values)


def print_header(extra: Sequence[str] = ()) -> dict:
    """Print the standard header (and ``extra`` lines: the other side's library and
    threads); return :func:`environment`."""
    env = environment()
    for line in [*header_lines(env), *extra]:
        print(line)
    return env


# -- --blas-env --------------------------------------------------------------------------


def add_blas_env(parser: argparse.ArgumentParser) -> None:
    """Add ``--blas-env free|haswell|machine`` (default free) to ``parser``."""
    parser.add_argument(
        BLAS_ENV_ARG,
        choices=(*BLAS_ENVS, "machine"),
        default="free",
        help="free: OPENBLAS_CORETYPE/L2_SIZE removed (users' default); haswell: "
        "OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512; machine: as it is",
    )


def blas_env(mode: str) -> dict[str, str] | None:
    """The environment to re-execute in for ``mode``, or None if this one is right."""
    if mode == "machine":
        return None
    want = BLAS_ENVS[mode]
    if all(os.environ.get(k) == want.get(k) for k in BLAS_VARS):
        return None
    return {k: v for k, v in os.environ.items() if k not in BLAS_VARS} | want


def apply_blas_env(mode: str) -> None:
    """Re-execute this process with the same command line in ``mode``'s BLAS environment
    (:func:`blas_env`), or return if it already has it."""
    env = blas_env(mode)
    if env is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def each_blas_env(module: str, argv: Sequence[str]) -> list[tuple[str, dict]]:
    """Run ``python -m module *argv --json --blas-env MODE`` for MODE free and haswell from
    the repository root (``argv`` without its own ``--all-envs``, ``--json`` and
    ``--blas-env``); each run's JSON result (its last line), by mode."""
    argv = without_options(argv, ("--all-envs", "--json"), (BLAS_ENV_ARG,))
    rows = []
    for mode in BLAS_ENVS:
        cmd = [sys.executable, "-m", module, *argv, "--json", BLAS_ENV_ARG, mode]
        print(f"== {BLAS_ENV_ARG} {mode}", flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        rows.append((mode, json.loads(out.strip().splitlines()[-1])))
    return rows


def blas_kernels(env: dict) -> str:
    """The BLAS kernels (architectures) an :func:`environment` names, comma-separated."""
    return ",".join(sorted({str(b["architecture"]) for b in env["blas"]}))


def without_options(argv: Sequence[str], flags: Sequence[str], valued: Sequence[str]) -> list:
    """``argv`` without the ``flags`` and the ``valued`` options (with their values)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            continue
        elif a in valued:
            skip = True
        elif not any(a.startswith(v + "=") for v in valued):
            out.append(a)
    return out

"""Sweep wall time, in-process vs a local Dask cluster, measured as a user runs it.

Each measurement is the wall clock of the command ``python -m pipeline sweep FILE -q``
(with ``--workers N`` for Dask) in a fresh process, into a fresh folder: imports,
checks, cluster start, cells, plots and the report all count. In-process and Dask runs
alternate in pairs (the order flips every pair); the figure is the median of each side
and their ratio. Both sides' ``results.csv`` must agree apart from ``wall_seconds``.

Before that, the fixed costs of a local cluster are measured once in this process:
``import distributed``, starting the cluster, the workers' first import of the sweep
code, a task round trip, closing.

    python bench/sweep_dask.py                     # a 12-cell cut of configs/bitdepth.yaml
    python bench/sweep_dask.py --pairs 3 --workers 2
    python bench/sweep_dask.py --sweep configs/bitdepth.yaml --pairs 1   # the full study

Load matters on a shared machine: the load average is printed with every figure. With
Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled`` = 1) every
terminal session gets one fair share of the cores, however many processes it runs: while
other sessions keep the cores busy, two worker processes get no more CPU than one process,
and the ratio measures Dask's overhead, not its parallel speed-up. Measure on a quiet
machine (load average below 1) for the figure a user sees.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's pipeline, also in the workers this process starts

from bench.common import interleaved, load_line, print_header  # noqa: E402

TIMING_COLUMNS = ("wall_seconds",)


def _worker_blas() -> str:
    """A worker's BLAS kernel and threads (self-contained: it runs in the worker)."""
    from threadpoolctl import threadpool_info

    return ", ".join(
        f"{i.get('internal_api')} {i.get('architecture')} {i.get('num_threads')} threads"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    )


def _autogroup() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def reduced_sweep(folder: Path) -> Path:
    """configs/bitdepth.yaml cut to one light level and four bit depths: 12 cells."""
    spec = yaml.safe_load((ROOT / "configs" / "bitdepth.yaml").read_text())
    spec["base"] = str(ROOT / "configs" / spec["base"])
    spec["axes"]["sensor.scene.mean_photons"] = [200]
    spec["axes"]["sensor.adc.bits"] = [2, 4, 8, 12]
    spec["name"] = "bitdepth-cut"
    path = folder / "bitdepth-cut.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def time_sweep(sweep: Path, out: Path, workers: int | None) -> float:
    """Wall seconds of ``python -m pipeline sweep`` into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "sweep", str(sweep), "-q", "--out", str(out)]
    if workers:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return wall


def table(out: Path) -> list[dict[str, str]]:
    """results.csv without its timing columns."""
    (path,) = out.glob("*/results.csv")
    with open(path, newline="") as f:
        return [
            {k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)
        ]


def _noop(x: int) -> int:
    return x


def fixed_costs(workers: int) -> None:
    """Print the fixed costs of a local cluster of ``workers`` processes."""
    t0 = time.perf_counter()
    import distributed

    t1 = time.perf_counter()
    import dask

    from pipeline.sweep.dask_engine import LOCAL_WORKER_CONFIG

    with dask.config.set(LOCAL_WORKER_CONFIG):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
    client = distributed.Client(cluster)
    t2 = time.perf_counter()
    client.run(__import__, "pipeline.sweep.cell")
    t3 = time.perf_counter()
    blas = client.run(_worker_blas)
    client.gather([client.submit(_noop, i, pure=False) for i in range(100)])
    t4 = time.perf_counter()
    client.close()
    cluster.close()
    t5 = time.perf_counter()
    print(f"fixed costs ({load_line()}):")
    print(f"  import distributed            {t1 - t0:6.2f} s")
    print(f"  start {workers} workers + client      {t2 - t1:6.2f} s")
    print(f"  workers import sweep code     {t3 - t2:6.2f} s")
    print(f"  task round trip               {(t4 - t3) * 10:6.2f} ms  (100 no-op tasks)")
    print(f"  close                         {t5 - t4:6.2f} s")
    print(f"  worker BLAS: {sorted(set(blas.values()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, help="sweep YAML (default: a 12-cell cut)")
    parser.add_argument("--pairs", type=int, default=2, help="interleaved pairs (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (default 2)")
    parser.add_argument("--no-costs", action="store_true", help="skip the fixed-cost probe")
    args = parser.parse_args()
    print_header(["BLAS (Dask workers): one thread each (OPENBLAS_NUM_THREADS=1, Dask's default)"])
    if _autogroup() and os.getloadavg()[0] > 1:
        print(f"note: {load_line()} with autogroup scheduling: other sessions share the cores,")
        print("      so the ratio below measures overhead more than speed-up (see the docstring)")
    if not args.no_costs:
        fixed_costs(args.workers)
    with tempfile.TemporaryDirectory(prefix="sweep-dask-") as tmp:
        folder = Path(tmp)
        sweep = args.sweep.resolve() if args.sweep else reduced_sweep(folder)
        pairs = interleaved(
            lambda: time_sweep(sweep, folder / "dask", args.workers),
            lambda: time_sweep(sweep, folder / "local", None),
            args.pairs,
        )
        same = table(folder / "local") == table(folder / "dask")
    print(f"sweep {sweep.name} (wall time of the whole command):")
    for line in pairs.lines(f"--workers {args.workers}", "in-process"):
        print(line)
    print(f"results.csv identical apart from timing: {'yes' if same else 'NO'}  ({load_line()})")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

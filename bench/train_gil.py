"""Benchmark: what the GIL costs bench/train.py's training step on more than one thread.

Two measurements of the same step (bench.cnn's net, batch, AdamW, ``bench.train.numpy_step``):

1. **The price of Python.** Every convolution chunk of the step (the kernels of the forward,
   the input gradient and the weight gradient: ``functional._corr_into`` and
   ``_wgrad_into``) is given ``--probe-us`` more microseconds of Python, a busy loop that
   holds the GIL as the engine's own Python between its NumPy calls does, alternating
   step by step with the plain step (each timed step after an untimed one of its kind).
   Printed: the Python added a step (chunks x probe) and the median wall time it added, at
   one worker thread and at the worker threads. Python that ran in parallel would add
   1/threads of itself; Python that runs one thread at a time adds all of it.
2. **The step without a shared GIL.** ``threads`` processes (spawned), each pinned to a
   core of its own at one worker thread, each run an equal share of the batch at the same
   moment (a barrier; a step is the slowest share), interleaved with this process's step
   of the whole batch on its worker threads and with one process's share alone. Printed:
   the three medians, threads against processes (what the GIL and the threads' hand-offs
   cost over a split with no GIL, which pays for smaller GEMMs instead), and processes
   together against one alone (what the cores cost each other: memory and caches). With
   PyTorch installed (not a sensorlab dependency) its step of the whole batch on as many
   threads joins the interleaving, as bench.train runs it, so torch / ours is printed for
   the threads and for the processes from the same run: how near a split with no GIL
   would bring this engine to the training target.

The header, load and ``--blas-env`` are bench/common.py's. On one core the second part is
skipped (there is no second process to run).

Usage (from the repository root)::

    python -m bench.train_gil                 # batch 64, 25 us a chunk, 15 pairs
    python -m bench.train_gil --pairs 5 --batch 16   # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cnn import make_model
from bench.common import add_blas_env, apply_blas_env, load_line, print_header, timed
from bench.train import (
    LR,
    WEIGHT_DECAY,
    bench_data,
    numpy_step,
    torch_side,
    torch_version,
)
from pipeline.cnn import functional
from pipeline.cnn.optim import AdamW
from pipeline.threads import THREADS_ENV, worker_threads

CHUNK_KERNELS = ("_corr_into", "_wgrad_into")
"""pipeline.cnn.functional's per-chunk convolution kernels, which the probe wraps."""


def make_step(batch: int, seed: int, share: slice = slice(None)) -> Callable[[], float]:
    """bench.train's step on the images ``share`` of its batch."""
    wts, x, labels = bench_data(batch, seed)
    model = make_model(wts)
    opt = AdamW(model.params, lr=LR, weight_decay=WEIGHT_DECAY)
    xs, ls = np.ascontiguousarray(x[share]), labels[share]
    return lambda: numpy_step(model, opt, xs, ls)


def spin(seconds: float) -> None:
    """Run Python (holding the GIL) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@contextmanager
def probed_chunks(us: float, counter: Iterator[int]) -> Iterator[None]:
    """Inside: each call of the chunk kernels first spins ``us`` microseconds and takes a
    number from ``counter``; the kernels are restored afterwards."""
    originals = {name: getattr(functional, name) for name in CHUNK_KERNELS}

    def probe(kernel: Callable) -> Callable:
        def probed(*args, **kwargs):
            next(counter)  # atomic under the GIL
            spin(us * 1e-6)
            return kernel(*args, **kwargs)

        return probed

    try:
        for name, kernel in originals.items():
            setattr(functional, name, probe(kernel))
        yield
    finally:
        for name, kernel in originals.items():
            setattr(functional, name, kernel)


def price_of_python(step: Callable[[], object], us: float, pairs: int) -> dict:
    """Median wall time that ``us`` microseconds of Python per convolution chunk add to
    ``step``, alternating plain and probed steps (each after an untimed one of its kind);
    also the chunks a step and the plain step's median."""
    counter = itertools.count()
    plain, probed = [], []
    for _ in range(pairs):
        step()
        plain.append(timed(step)[0])
        with probed_chunks(us, counter):
            step()
            start = next(counter)
            probed.append(timed(step)[0])
            chunks = next(counter) - start - 1
    return {
        "chunks": chunks,
        "python_s": chunks * us * 1e-6,
        "added_s": float(np.median(np.subtract(probed, plain))),
        "plain_s": float(np.median(plain)),
    }


@contextmanager
def worker_count(n: int) -> Iterator[None]:
    """``SENSORLAB_THREADS`` = n inside (the pool reads it at each region)."""
    old = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = str(n)
    try:
        yield
    finally:
        if old is None:
            del os.environ[THREADS_ENV]
        else:
            os.environ[THREADS_ENV] = old


def shares(batch: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices of a batch, sizes differing by at most one image."""
    bounds = [batch * k // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _share_worker(core: int, share: slice, batch: int, seed: int, barrier, conn) -> None:
    """A process's loop: on ("go", together) run an untimed then a timed step of its
    share (after the barrier when ``together``) and send the timed one's seconds."""
    os.sched_setaffinity(0, {core})
    os.environ[THREADS_ENV] = "1"
    step = make_step(batch, seed, share)
    step()
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        _, together = msg
        step()
        if together:
            barrier.wait()
        conn.send(timed(step)[0])


def without_shared_gil(
    batch: int, seed: int, pairs: int, threads: int, torch_step: Callable | None = None
) -> dict:
    """Medians of: ``threads`` processes, one core and one worker thread each, each
    stepping an equal share of the batch at once (a step: the slowest share); one of
    them alone; this process's step of the whole batch on ``threads`` worker threads;
    and ``torch_step`` when given (then followed by a 10 ms pause: its OpenMP threads
    spin on for a few ms). Interleaved, each timed step after an untimed one of its kind."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(cores))
    links, procs = [], []
    for core, share in zip(cores, shares(batch, len(cores)), strict=True):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_share_worker, args=(core, share, batch, seed, barrier, child))
        proc.start()
        links.append(parent)
        procs.append(proc)
    try:
        for link in links:
            assert link.recv() == "ready"
        whole = make_step(batch, seed)
        together, alone, threaded, torch = [], [], [], []
        with worker_count(len(cores)):
            for _ in range(pairs):
                for link in links:
                    link.send(("go", True))
                together.append(max(link.recv() for link in links))
                links[0].send(("go", False))
                alone.append(links[0].recv())
                whole()
                threaded.append(timed(whole)[0])
                if torch_step is not None:
                    torch_step()
                    torch.append(timed(torch_step)[0])
                    time.sleep(0.01)
        for link in links:
            link.send(None)
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
    r = {
        "processes": len(cores),
        "shares": [s.stop - s.start for s in shares(batch, len(cores))],
        "together_s": float(np.median(together)),
        "alone_s": float(np.median(alone)),
        "threads_s": float(np.median(threaded)),
        "threads_over_processes": float(np.median(np.divide(threaded, together))),
    }
    if torch:
        r["torch_s"] = float(np.median(torch))
        r["torch_over_threads"] = float(np.median(np.divide(torch, threaded)))
        r["torch_over_processes"] = float(np.median(np.divide(torch, together)))
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=15, help="alternations of each measurement")
    ap.add_argument("--probe-us", type=float, default=25.0, help="Python added to each chunk")
    ap.add_argument("--seed", type=int, default=0)
    add_blas_env(ap)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    apply_blas_env(args.blas_env)
    threads = worker_threads()
    print_header([f"training step, batch {args.batch}, worker threads {threads}"])
    step = make_step(args.batch, args.seed)
    counts = sorted({1, threads})
    print(f"the price of Python: {args.probe_us:g} us more Python in each convolution chunk")
    for n in counts:
        with worker_count(n):
            r = price_of_python(step, args.probe_us, args.pairs)
        per = r["added_s"] / r["python_s"]
        print(
            f"  {n} worker thread{'s' if n > 1 else ' '}: step {r['plain_s'] * 1e3:6.1f} ms;"
            f" {r['chunks']} chunks a step, {r['python_s'] * 1e3:.1f} ms of Python added"
            f" {r['added_s'] * 1e3:+.1f} ms of wall ({per:.2f} ms a ms; run in parallel"
            f" it would be {1 / n:.2f})"
        )
    if threads < 2:
        print("the step without a shared GIL: skipped (one worker thread)")
    else:
        torch_step = None
        if torch_version() is not None:
            torch_step = torch_side(*bench_data(args.batch, args.seed), threads)[0]
        r = without_shared_gil(args.batch, args.seed, args.pairs, threads, torch_step)
        split = "+".join(map(str, r["shares"]))
        print(
            f"the step without a shared GIL: batch {args.batch} as {split} images,"
            f" {r['processes']} processes, one core and one worker thread each"
        )
        print(
            f"  processes together {r['together_s'] * 1e3:6.1f} ms (the slowest share);"
            f" one alone {r['alone_s'] * 1e3:6.1f} ms: the cores slow each other"
            f" {r['together_s'] / r['alone_s']:.2f}x"
        )
        print(
            f"  this process, {threads} worker threads {r['threads_s'] * 1e3:6.1f} ms:"
            f" {r['threads_over_processes']:.2f}x the processes' step (median of pairs)"
        )
        if "torch_s" in r:
            print(
                f"  torch, {threads} threads {r['torch_s'] * 1e3:6.1f} ms: torch / ours"
                f" {r['torch_over_threads']:.2f}x on threads, {r['torch_over_processes']:.2f}x"
                " as processes (medians of pairs)"
            )
        else:
            print("  torch: skipped (not installed; it is not a sensorlab dependency)")
    print(load_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

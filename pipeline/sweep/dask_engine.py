"""Run picklable tasks in-process, on a local Dask cluster or on a Dask scheduler, with a
per-process cache that workers keep between tasks.

The public entry point for any feature that farms out independent work (a sweep's cells,
an optimiser's candidate evaluations)::

    from pipeline.sweep.dask_engine import cached, open_engine, run_tasks

    def score(candidate):                      # runs in a worker, or in this process
        data = cached(("data", path, mtime_ns), lambda: load(path))  # once per process
        return evaluate(candidate, data)

    results = run_tasks(score, candidates, workers=2)     # in the order of candidates

    with open_engine(workers=2, warm=warm_up) as engine:    # warm_up(): imports, once
        ...                 # checks here: the cluster starts in the background meanwhile
        engine.ready()      # waits for it; UserError when a scheduler cannot be reached
        for task, result in engine.map(score, candidates):   # in completion order
            ...

``fn``, ``warm`` and the tasks must be picklable (module-level functions, plain data).
The same code runs on every engine, so a deterministic task gives the same result on each.

Fixed costs of a local cluster, measured on a 2-core machine (bench/sweep_dask.py prints
them): ``import distributed`` 0.9-1.3 s in the parent; starting 2 worker processes and a
client 2.6-4 s; importing sensorlab's sweep code in a worker 1.1-2.5 s; closing 1.2-2 s; a
task round trip 3-20 ms. The first sweep cell in a fresh process costs 2.5-3.5 s more CPU
than the next ones, nearly all of it imports that libraries make lazily (scipy.stats
through skimage's metrics, matplotlib.pyplot, the stage plugins). :func:`open_engine`
starts the cluster and runs ``warm`` on each worker in a background thread, so all of
this overlaps the caller's own work.

Worker processes of a local cluster are single-threaded, BLAS at one thread (Dask's
defaults), with two of Dask's defaults turned off (:data:`LOCAL_WORKER_CONFIG`): the
statistical profiler, which samples the running task's stack every 10 ms, and
``MALLOC_TRIM_THRESHOLD_=65536``, which turns off glibc's adaptive mmap threshold, so every
NumPy temporary above 128 KiB is mapped and unmapped afresh, page faults included.
Measured CPU per task: a sweep cell of configs/bitdepth.yaml 1.44 s with Dask's defaults,
1.26 s without them, 1.26 s in-process (interleaved); a retrain cell of
configs/bitdepth-retrain.yaml (2 epochs) 65.8 s with Dask's defaults, 41.3 s without,
35.4 s in-process. A cluster given by ``scheduler`` is used as it is configured.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from pipeline.errors import UserError

__all__ = [
    "CACHE_BYTES",
    "CACHE_ENTRIES",
    "DASK_HINT",
    "LOCAL_WORKER_CONFIG",
    "Engine",
    "cached",
    "clear_cache",
    "import_distributed",
    "open_engine",
    "run_tasks",
]

T = TypeVar("T")
R = TypeVar("R")

DASK_HINT = "install the optional extra: pip install 'sensorlab[dask]'"
CACHE_BYTES = 512 * 2**20  # per process: values past this (oldest used first) are dropped
CACHE_ENTRIES = 32  # per process, whatever their size

# Dask settings of a local cluster's workers (see the module docstring): None unsets
# MALLOC_TRIM_THRESHOLD_ (BLAS and OpenMP stay at one thread); no statistical profiler
# sampling the task's stack every 10 ms.
LOCAL_WORKER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}

_cache: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
_cache_lock = threading.Lock()


# --------------------------------------------------------------------------- cache
def cached(key: Hashable, build: Callable[[], T], *, nbytes: Callable[[T], int] | None = None) -> T:
    """The value ``build()`` gave for ``key`` earlier in this process, else ``build()`` now.

    A Dask worker keeps its cache between tasks, so a task can reuse what an earlier task
    on the same worker loaded. The key must name everything the value depends on (a
    file's path with its modification time and size, or a content hash); values must not
    be modified by their users.

    Parameters
    ----------
    key : hashable identity of the value.
    build : makes the value when it is not cached.
    nbytes : the value's size in bytes, for the :data:`CACHE_BYTES` budget (default 0).

    Returns
    -------
    The cached or new value.
    """
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit[0]
    value = build()
    size = int(nbytes(value)) if nbytes is not None else 0
    with _cache_lock:
        _cache[key] = (value, size)
        _cache.move_to_end(key)
        while len(_cache) > 1 and (
            len(_cache) > CACHE_ENTRIES or sum(s for _, s in _cache.values()) > CACHE_BYTES
        ):
            _cache.popitem(last=False)
    return value


def clear_cache() -> None:
    """Empty this process's :func:`cached` values."""
    with _cache_lock:
        _cache.clear()


# --------------------------------------------------------------------------- engines
def import_distributed() -> Any:
    """``distributed``, or a UserError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise UserError(f"--workers and --scheduler need Dask distributed; {DASK_HINT}") from None
    return distributed


class Engine:
    """Where tasks run: this process, a local Dask cluster of ``workers`` single-threaded
    processes, or the Dask cluster at ``scheduler``. Made by :func:`open_engine`.

    Attributes
    ----------
    kind : ``"in-process"``, ``"dask-local"`` or ``"dask"``.
    """

    def __init__(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        warm: Callable[[], Any] | None = None,
    ) -> None:
        if workers is not None and scheduler is not None:
            raise UserError("give --workers or --scheduler, not both")
        self.workers = workers
        self.scheduler = scheduler
        self.warm = warm
        self.kind = "dask" if scheduler else "dask-local" if workers else "in-process"
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._client: Any = None
        self._cluster: Any = None

    def start(self) -> Engine:
        """Start connecting (Dask) in a background thread; returns self."""
        if self.kind != "in-process" and self._thread is None:
            import_distributed()
            self._thread = threading.Thread(target=self._connect, name="sensorlab-dask-start")
            self._thread.daemon = True
            self._thread.start()
        return self

    def ready(self) -> None:
        """Wait until the cluster is up and warm; re-raise what went wrong starting it."""
        self.start()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def slots(self) -> int:
        """How many tasks run at once (worker threads of the cluster; 1 in-process)."""
        if self.kind == "in-process":
            return 1
        self.ready()
        threads = self._client.nthreads()
        return max(1, sum(threads.values()))

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[T, R]]:
        """``(task, fn(task))`` for every task: in order in-process, in completion order
        on Dask. Stopping early cancels what has not run."""
        tasks = list(tasks)
        if self.kind == "in-process":
            for task in tasks:
                yield task, fn(task)
            return
        self.ready()
        distributed = import_distributed()
        futures = {self._client.submit(fn, t, pure=False): t for t in tasks}
        try:
            for future in distributed.as_completed(futures):
                yield futures[future], future.result()
        finally:
            self._client.cancel(list(futures))

    def close(self) -> None:
        """Disconnect; a local cluster is shut down (a cluster at ``scheduler`` keeps running)."""
        if self._thread is not None:
            self._thread.join()
        for resource in (self._client, self._cluster):
            if resource is not None:
                with contextlib.suppress(Exception):
                    resource.close()
        self._client = self._cluster = None

    def _connect(self) -> None:
        try:
            self._client, self._cluster = _connect(self.workers, self.scheduler)
            if self.warm is not None:
                self._client.run(self.warm)
        except BaseException as exc:  # re-raised by ready() in the caller's thread
            self._error = exc


@contextlib.contextmanager
def open_engine(
    workers: int | None = None,
    scheduler: str | None = None,
    *,
    warm: Callable[[], Any] | None = None,
) -> Iterator[Engine]:
    """An :class:`Engine`, started in the background, closed on exit.

    Parameters
    ----------
    workers : a local Dask cluster of this many single-threaded worker processes.
    scheduler : the address of a running Dask scheduler (``tcp://host:port``).
    warm : run on each worker as soon as it starts (imports, say: saves the first
        task's wait); not in-process.

    Neither ``workers`` nor ``scheduler``: tasks run in this process.
    """
    engine = Engine(workers, scheduler, warm).start()
    try:
        yield engine
    finally:
        engine.close()


def run_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    warm: Callable[[], Any] | None = None,
) -> list[R]:
    """``[fn(t) for t in tasks]`` on an engine (see :func:`open_engine`), in task order."""
    with open_engine(workers, scheduler, warm=warm) as engine:
        pairs = engine.map(functools.partial(_numbered, fn), enumerate(tasks))
        done = dict(result for _, result in pairs)
    return [done[i] for i in range(len(tasks))]


def _numbered(fn: Callable[[T], R], item: tuple[int, T]) -> tuple[int, R]:
    return item[0], fn(item[1])


def _connect(workers: int | None, scheduler: str | None) -> tuple[Any, Any]:
    """(client, local cluster or None)."""
    import logging

    import dask

    distributed = import_distributed()
    if scheduler is not None:
        try:
            return distributed.Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise UserError(
                f"cannot connect to the Dask scheduler at {scheduler}: {exc}", key="--scheduler"
            ) from None
    with dask.config.set(LOCAL_WORKER_CONFIG):
        cluster = distributed.LocalCluster(
            n_workers=int(workers or 1),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never collides with another cluster
            silence_logs=logging.ERROR,
        )
    try:
        return distributed.Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise

"""Where searches run: in this process, or as Dask tasks (one per search).

The Dask client comes from the sweep engine (:mod:`pipeline.sweep.engine`), through
:func:`dask_client` only: that is the one place to repoint when the sweep's Dask
orchestration moves. Searches are independent and seeded from their tasks, so every
engine gives the same records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["dask_client", "run_tasks"]


def dask_client(workers: int | None, scheduler: str | None) -> contextlib.AbstractContextManager:
    """A Dask client on a new local cluster of ``workers`` processes, or on ``scheduler``
    (UserError when Dask is missing or the scheduler cannot be reached)."""
    from pipeline.sweep import engine

    engine._import_distributed()
    return engine._dask_client(workers, scheduler)


def run_tasks(
    fn: Callable[[Any], dict], tasks: Sequence[Any], client: Any = None
) -> Iterator[tuple[Any, dict]]:
    """``(task, fn(task))`` for every task: in order in this process (``client`` None),
    or as they finish on the Dask ``client``."""
    if client is None:
        for task in tasks:
            yield task, fn(task)
        return
    import distributed

    futures = {client.submit(fn, t, pure=False): t for t in tasks}
    try:
        for future in distributed.as_completed(futures):
            yield futures[future], future.result()
    finally:
        client.cancel(list(futures))

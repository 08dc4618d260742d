"""Where independent chunks run: in this process, a local process pool, or Dask distributed.

Science code hands an :class:`Executor` a picklable function and a list of tasks and iterates the results as they
finish; it never imports a workflow engine. Dask is optional (``pip install 'aloe[dask]'``).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol

from aloe.errors import AloeError


class Executor(Protocol):
    """Runs ``fn(task)`` for each task, yielding results in completion order."""

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """Yield ``fn(task)`` for every task as each finishes."""
        ...


class LocalExecutor:
    """Runs tasks one after another in this process (the default; easiest to debug)."""

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """Yield ``fn(task)`` in task order."""
        for task in tasks:
            yield fn(task)


class ProcessExecutor:
    """A local pool of worker processes (``concurrent.futures``), at most ``2 * workers`` tasks in flight."""

    def __init__(
        self, workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
    ) -> None:
        self.workers = workers
        self.initializer = initializer
        self.initargs = initargs

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """Yield results as workers finish them."""
        task_iter = iter(tasks)
        # forkserver, not fork: forking a parent whose torch/OpenMP thread pool is running can deadlock the child.
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=self.initializer, initargs=self.initargs
        ) as pool:
            pending = set()
            for task in task_iter:
                pending.add(pool.submit(fn, task))
                if len(pending) >= 2 * self.workers:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    nxt = next(task_iter, None)
                    if nxt is not None:
                        pending.add(pool.submit(fn, nxt))


class DaskExecutor:
    """Tasks on a Dask distributed cluster: an existing scheduler address, or a ``LocalCluster``."""

    def __init__(self, address: str | None = None, workers: int = 1) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise AloeError("executor 'dask' needs dask distributed: pip install 'aloe[dask]'") from None
        if address:
            self.client = Client(address)
            self.cluster = None
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
            self.client = Client(self.cluster)

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """Submit every task and yield results as they complete."""
        from dask.distributed import as_completed

        futures = self.client.map(fn, list(tasks), pure=False)
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            self.close()

    def close(self) -> None:
        """Shut the client (and a cluster we started) down."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def get_executor(
    kind: str,
    workers: int = 1,
    *,
    scheduler: str | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Executor:
    """Build an executor by name: ``local``, ``process`` or ``dask``.

    ``initializer(*initargs)`` runs once per worker process for ``process``; with ``local`` it runs here.
    """
    if kind == "local" or (kind == "process" and workers <= 1):
        if initializer is not None:
            initializer(*initargs)
        return LocalExecutor()
    if kind == "process":
        return ProcessExecutor(workers, initializer, initargs)
    if kind == "dask":
        return DaskExecutor(scheduler, workers)
    raise AloeError(f"unknown executor {kind!r} (choose local, process or dask)")

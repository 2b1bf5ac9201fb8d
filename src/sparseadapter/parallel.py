"""Where the runs of a grid train: one after another in this process, or several at once on Ray.

Both executors run a module-level function on each item of a list and yield one
:class:`Outcome` per item as it completes. They share one failure rule: a
:class:`SparseAdapterError` (bad input) is reported at once, since training again gives the
same error; any other failure (an unexpected exception, a Ray worker that died) is retried once
(``RETRIES``), then reported. Nothing is raised for a failed item: the caller counts it.

Ray core, not Ray Tune: a grid's runs are fixed in advance and each run already writes, resumes
and reports its own folder, so what is needed is only "run these functions on N workers"; Tune
would add trial folders, result logging and checkpoint syncing of its own beside ours.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sparseadapter.errors import ConfigError, SparseAdapterError

T = TypeVar("T")
RETRIES = 1  # a run that failed for another reason than bad input is tried once more
RAY_EXTRA = "pip install 'sparseadapter[ray]'"


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What became of one item: its value, or the error that stopped its last attempt."""

    item: T
    value: Any = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    """Runs ``fn(item)`` for each item; ``fn`` must be importable (a module-level function or a
    ``functools.partial`` of one) so that Ray can ship it to its workers."""

    description: str

    def map(
        self,
        fn: Callable[[T], Any],
        items: Iterable[T],
        started: Callable[[T], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[Outcome[T]]:
        """Yield an Outcome per item as it completes. ``started(item)`` is called as an item is
        started; once ``stop()`` is true no further item is started (running ones finish)."""
        ...

    def close(self) -> None: ...


def _call(fn: Callable[[T], Any], item: T, threads: int | None, cwd: str | None) -> tuple:
    """``fn(item)`` as ("ok", value), ("user", message) or ("error", message): a failure comes
    back as a value, so the retry rule sees the same thing in this process and on Ray."""
    if cwd is not None and os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in the run configs mean what they meant to the driver
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        return "ok", fn(item)
    except SparseAdapterError as err:
        return "user", str(err)
    except Exception as err:
        last = traceback.extract_tb(err.__traceback__)[-1]
        return "error", f"{type(err).__name__}: {err} ({last.filename}:{last.lineno})"


class SequentialExecutor:
    """One item after another, in this process: the default."""

    description = "one at a time"

    def map(
        self,
        fn: Callable[[T], Any],
        items: Iterable[T],
        started: Callable[[T], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[Outcome[T]]:
        for item in items:
            if stop is not None and stop():
                return
            if started is not None:
                started(item)
            attempts = 1
            kind, value = _call(fn, item, None, None)
            while _retry(kind, attempts):
                attempts += 1
                kind, value = _call(fn, item, None, None)
            yield _outcome(item, kind, value, attempts)

    def close(self) -> None:
        pass


def _retry(kind: str, attempts: int) -> bool:
    """Whether an item whose attempt number ``attempts`` ended as ``kind`` is tried again."""
    return kind == "error" and attempts <= RETRIES


def _outcome(item: T, kind: str, value: Any, attempts: int) -> Outcome[T]:
    if kind == "ok":
        return Outcome(item, value=value, attempts=attempts)
    return Outcome(item, error=str(value), attempts=attempts)


class RayExecutor:
    """``workers`` items at a time as Ray tasks: on a local Ray started here (the default), or on
    the running cluster at ``address``. Each task asks Ray for one GPU where the cluster has
    GPUs, and for ``threads`` CPUs (default: the CPUs of the largest node over ``workers``),
    which are also its torch threads. A Ray started here is shut down by :meth:`close`.

    Ray starts on the first :meth:`map` call, so a grid whose runs are all finished starts none.
    """

    def __init__(self, workers: int, address: str | None = None, threads: int | None = None):
        import ray  # ImportError here: see make_executor

        self._ray = ray
        # RAY_ADDRESS in the environment names a cluster to join, as ``address`` does
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.workers, self.address, self.threads = workers, address, threads
        self._options: dict[str, Any] | None = None
        self._started_here = False
        where = f"the Ray cluster at {address}" if address else "local Ray"
        self.description = f"on {where}, {workers} at once"

    def _start(self) -> dict[str, Any]:
        ray = self._ray
        if not ray.is_initialized():
            cpus = max(self.workers, os.cpu_count() or 1)
            local = {} if self.address else {"num_cpus": cpus, "include_dashboard": False}
            ray.init(address=self.address, logging_level="WARNING", **local)
            self._started_here = True
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        largest = max((n.get("CPU", 0) for n in nodes), default=1)
        threads = self.threads or max(1, int(largest) // self.workers)
        gpus = 1 if any(n.get("GPU", 0) >= 1 for n in nodes) else 0
        self.threads = threads
        self.description += f", {threads} CPU thread(s)" + (" and 1 GPU" if gpus else "") + " each"
        return {"num_cpus": threads, "num_gpus": gpus, "max_retries": 0}

    def map(
        self,
        fn: Callable[[T], Any],
        items: Iterable[T],
        started: Callable[[T], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[Outcome[T]]:
        if self._options is None:
            self._options = self._start()
        ray = self._ray
        task = ray.remote(_call).options(**self._options)
        cwd = os.getcwd()
        waiting = list(items)
        running: dict[Any, tuple[T, int]] = {}  # task reference -> (item, attempt)

        def submit(item: T, attempt: int) -> None:
            running[task.remote(fn, item, self.threads, cwd)] = (item, attempt)

        while waiting or running:
            while waiting and len(running) < self.workers and not (stop is not None and stop()):
                item = waiting.pop(0)
                if started is not None:
                    started(item)
                submit(item, 1)
            if not running:
                return
            (done,), _ = ray.wait(list(running), num_returns=1)
            item, attempt = running.pop(done)
            try:
                kind, value = ray.get(done)
            except ray.exceptions.RayError as err:  # the worker died, or Ray lost the task
                kind, value = "error", f"{type(err).__name__}: {str(err).splitlines()[0]}"
            if _retry(kind, attempt):
                submit(item, attempt + 1)
                continue
            yield _outcome(item, kind, value, attempt)

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()
            self._started_here = False


def make_executor(
    workers: int = 1, address: str | None = None, echo: Callable[[str], None] = print
) -> Executor:
    """The executor for ``--workers`` / ``--address``: sequential for one worker and no address,
    Ray otherwise. Without Ray installed, more workers fall back to sequential with a one-line
    hint through ``echo``; an address cannot (ConfigError)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a whole number >= 1, got {workers!r}")
    if workers == 1 and address is None:
        return SequentialExecutor()
    try:
        return RayExecutor(workers, address)
    except ImportError:
        if address is not None:
            raise ConfigError(
                f"--address {address} needs Ray, which is not installed: {RAY_EXTRA}"
            ) from None
        echo(
            f"Ray is not installed, so the runs train one at a time: {RAY_EXTRA} "
            f"to train {workers} at once"
        )
        return SequentialExecutor()

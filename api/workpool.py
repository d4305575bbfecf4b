"""Worker processes for CPU-heavy requests (latency prediction, ONNX export, reading an uploaded dataset or model).

Such work must not run on the event loop, nor in the API's thread pool, where one owner's
requests would hold the interpreter lock and the threads every other request needs. Each API
process keeps ``work_processes`` slots, each a one-process executor spawned on first use, at a
lower CPU priority than the API; dataset uploads and model uploads are each read in a pool of
their own, so reads that take minutes never hold up a latency prediction. A request takes a free slot or waits for one while at most
``work_queue`` others wait; beyond that it answers 503 with ``Retry-After``. An owner who already
has ``limit_expensive_requests`` requests in flight in this process gets 429 with ``Retry-After``.

A task that runs past ``work_timeout_s`` (or the limit its caller gives) is ended by the kernel:
the worker arms ``SIGALRM`` with its default action, which terminates the process even inside one
long C call (a big LSTM, a decoder), where a Python-level timeout would never fire. The request
answers 503 naming the limit, and the slot starts a fresh process for the next one. One slot per executor keeps such a kill from failing the
other slots' requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, status

from nas.settings import Settings

WAIT_POLL_S = 0.05


@dataclass(frozen=True)
class WorkError:
    """An HTTP error a task answers with; returned rather than raised so that it pickles plainly."""

    status_code: int
    detail: Any


@dataclass(frozen=True)
class TimeLimit:
    """The seconds a task may run, and the setting that says so (named when a task is killed)."""

    seconds: int
    setting: str


class WorkerKilled(HTTPException):
    """503: the task ran past its time limit and was killed, or its process died (out of memory?)."""

    def __init__(self, limit: TimeLimit, timed_out: bool) -> None:
        if timed_out:
            detail = f"the request ran past this server's limit of {limit.seconds} s ({limit.setting})"
        else:
            detail = "the worker process died (out of memory?)"
        super().__init__(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": "1"})
        self.timed_out = timed_out


def _init_worker(env: dict[str, str]) -> None:
    """The server's settings (the worker reads them from the environment), one thread, lower
    priority, latency predictions corrected by the observations in the server's database, and the
    stored models (records and files), from which a trial of a model's search is rebuilt to export it
    (the route checked the caller may see the trial)."""
    from nas.models.stored import use_model_catalog
    from nas.settings import Settings
    from nas.store import Store, make_engine
    from nas.store.model_catalog import StoreModelCatalog
    from nas.store.observations import predict_with_store_observations

    os.environ.update(env)
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    os.nice(5)
    settings = Settings.from_env()
    store = Store(make_engine(settings.database_url))
    predict_with_store_observations(store)
    use_model_catalog(StoreModelCatalog(store, None, settings.artifact_dir))
    # PyTorch, the ONNX exporter and runtime, and the predictor load here, outside any request's time limit.
    import nas.export  # noqa: F401
    import nas.latency  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
    import torch.onnx._internal.exporter._core  # noqa: F401


def _init_reader(env: dict[str, str]) -> None:
    """The server's settings, one thread and lower priority, for reading uploads (no PyTorch)."""
    os.environ.update(env)
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    os.nice(5)


def _run_with_alarm(timeout_s: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Run ``fn(*args)``; past ``timeout_s`` seconds the kernel ends this process (``SIGALRM``'s default)."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(timeout_s)
    try:
        return fn(*args)
    finally:
        signal.alarm(0)


def _too_busy(detail: str, status_code: int, retry_after: int) -> HTTPException:
    return HTTPException(status_code, detail, headers={"Retry-After": str(retry_after)})


class WorkPool:
    """The slots of one API process, and the per-owner count of requests in flight.

    ``initializer`` prepares each worker process from the settings' environment; ``what`` names
    the requests the pool runs, in its answers.
    """

    def __init__(
        self,
        settings: Settings,
        initializer: Callable[[dict[str, str]], None] = _init_worker,
        what: str = "latency predictions, ONNX exports",
    ) -> None:
        self.settings = settings
        self.initializer = initializer
        self.what = what
        self._lock = threading.Lock()
        self._slots: list[concurrent.futures.ProcessPoolExecutor | None] = [None] * settings.work_processes
        self._busy = [False] * settings.work_processes
        self._waiting = 0
        self._per_owner: dict[str, int] = {}
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs threads

    def check_admission(self, owner: str) -> None:
        """Raise now the 429 or 503 that :meth:`run` would answer at once, so that a request with a
        large body (an upload) is refused before it is received."""
        with self._lock:
            self._refuse_if_full(owner)

    def _admit(self, owner: str) -> None:
        """Count the request in, or refuse it: 429 for this owner's quota, 503 for a full queue."""
        with self._lock:
            self._refuse_if_full(owner)
            self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
            self._waiting += 1

    def _refuse_if_full(self, owner: str) -> None:
        limit = self.settings.limit_expensive_requests
        retry = max(1, math.ceil(self.settings.work_timeout_s / 4))
        if self._per_owner.get(owner, 0) >= limit:
            raise _too_busy(
                f"{owner} already has {limit} expensive requests ({self.what}) "
                f"running; the limit is NAS_LIMIT_EXPENSIVE_REQUESTS={limit}",
                status.HTTP_429_TOO_MANY_REQUESTS, retry,
            )  # fmt: skip
        if all(self._busy) and self._waiting >= self.settings.work_queue:
            raise _too_busy(
                f"the server is busy: {len(self._busy)} worker processes busy and {self._waiting} requests "
                f"waiting (NAS_WORK_PROCESSES, NAS_WORK_QUEUE)",
                status.HTTP_503_SERVICE_UNAVAILABLE, retry,
            )  # fmt: skip

    def _release_owner(self, owner: str) -> None:
        with self._lock:
            left = self._per_owner[owner] - 1
            if left:
                self._per_owner[owner] = left
            else:
                del self._per_owner[owner]

    def _take_slot(self) -> int | None:
        with self._lock:
            for i, busy in enumerate(self._busy):
                if not busy:
                    self._busy[i] = True
                    self._waiting -= 1
                    if self._slots[i] is None:
                        env = self.settings.to_env()
                        self._slots[i] = concurrent.futures.ProcessPoolExecutor(
                            1, mp_context=self._context, initializer=self.initializer, initargs=(env,)
                        )
                    return i
            return None

    def _free_slot(self, i: int, broken: bool) -> None:
        with self._lock:
            executor = self._slots[i]
            if broken and executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
                self._slots[i] = None  # the next request starts a fresh process
            self._busy[i] = False

    async def run(self, owner: str, fn: Callable[..., Any], *args: Any, limit: TimeLimit | None = None) -> Any:
        """``fn(*args)`` in a worker process, killed past ``limit`` (``NAS_WORK_TIMEOUT_S`` without
        one); a returned :class:`WorkError` is raised as its HTTP error, a killed or dead worker
        as :class:`WorkerKilled`."""
        wait_s = self.settings.work_timeout_s
        limit = limit or TimeLimit(wait_s, "NAS_WORK_TIMEOUT_S")
        self._admit(owner)
        try:
            deadline = time.monotonic() + wait_s
            while (slot := self._take_slot()) is None:
                if time.monotonic() > deadline:
                    with self._lock:
                        self._waiting -= 1
                    raise _too_busy(f"no worker process became free within {wait_s} s (NAS_WORK_TIMEOUT_S)",
                                    status.HTTP_503_SERVICE_UNAVAILABLE, 1)  # fmt: skip
                await asyncio.sleep(WAIT_POLL_S)
            broken = False
            started = time.monotonic()
            try:
                executor = self._slots[slot]
                assert executor is not None
                result = await asyncio.wrap_future(executor.submit(_run_with_alarm, limit.seconds, fn, args))
            except BrokenProcessPool:
                broken = True
                timed_out = time.monotonic() - started >= limit.seconds - 1
                raise WorkerKilled(limit, timed_out) from None
            finally:
                self._free_slot(slot, broken)
        finally:
            self._release_owner(owner)
        if isinstance(result, WorkError):
            raise HTTPException(result.status_code, result.detail)
        return result

    def shutdown(self) -> None:
        with self._lock:
            for executor in self._slots:
                if executor is not None:
                    executor.shutdown(wait=False, cancel_futures=True)
            self._slots = [None] * len(self._slots)


POOLS = ("work_pool", "ingest_pool", "model_pool")  # the app.state attributes that hold an app's pools


def work_pool(request: Request) -> WorkPool:
    """The app's pool for latency predictions and ONNX exports, made on first use."""
    return _app_pool(request, "work_pool", WorkPool)


def ingest_pool(request: Request) -> WorkPool:
    """The app's pool for reading uploaded datasets, made on first use."""
    return _app_pool(request, "ingest_pool", reader_pool)


def reader_pool(settings: Settings) -> WorkPool:
    """A pool for reading uploaded datasets: its processes load no PyTorch."""
    return WorkPool(settings, _init_reader, "dataset uploads")


def model_pool(request: Request) -> WorkPool:
    """The app's pool for checking uploaded models, made on first use: a pool of its own, since its
    processes load PyTorch and onnxruntime (the dataset readers stay light) and a check of a large
    model takes minutes (latency predictions are never held up by one)."""
    return _app_pool(request, "model_pool", lambda settings: WorkPool(settings, _init_reader, "model uploads"))


def _app_pool(request: Request, name: str, make: Callable[[Settings], WorkPool]) -> WorkPool:
    pool = getattr(request.app.state, name, None)
    if pool is None:
        with _pool_lock:
            pool = getattr(request.app.state, name, None)
            if pool is None:
                # The workers read the app's own database (latency observations), whatever the settings name.
                database_url = request.app.state.store.engine.url.render_as_string(hide_password=False)
                pool = make(dataclasses.replace(request.app.state.settings, database_url=database_url))
                setattr(request.app.state, name, pool)
    return pool


_pool_lock = threading.Lock()

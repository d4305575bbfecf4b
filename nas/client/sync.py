"""The synchronous client."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tenacity
from httpx_sse import connect_sse

from nas.client._base import (
    RETRY_STATUSES,
    SAFE_METHODS,
    STREAM_READ_TIMEOUT_S,
    ClientSettings,
    check_format,
    model_target,
    partial_path,
    query,
    reconnect_delay,
    spec_body,
)
from nas.client.errors import (
    AuthenticationError,
    ConflictError,
    ConnectionFailed,
    ServerError,
    WaitTimeout,
    error_for,
)
from nas.client.models import Event, JobPage, TrialPage
from nas.specs import Job, JobSpec, JobStatus, JobSummary, Trial, TrialState

T = TypeVar("T")
Progress = bool | Callable[[Job], None]


class Client:
    """Synchronous client of the REST API; a context manager that closes its connections.

    ``url`` and ``api_key`` default to ``NAS_URL`` and ``NAS_API_KEY``. Reads and cancel are
    retried on connection errors and 502/503/504 (``retries`` times, ``backoff`` seconds first,
    doubling). Pass ``transport=`` (any httpx transport) to talk to an app in-process.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.settings = ClientSettings(url, api_key, timeout, retries, backoff, headers)
        self._http = httpx.Client(
            base_url=self.settings.api_url, headers=self.settings.headers, transport=transport, timeout=timeout
        )

    @property
    def url(self) -> str:
        return self.settings.url

    def dashboard_url(self, job_id: str | None = None) -> str:
        """The web dashboard's page of ``job_id`` (or its jobs list)."""
        return self.settings.dashboard_url(job_id)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One attempt; an error status raises its :class:`~nas.client.ApiError`."""
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def _retried(self, attempt: Callable[[], T], idempotent: bool) -> T:
        try:
            return tenacity.Retrying(**self.settings.retry.options(idempotent))(attempt)
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, exc) from exc

    def _request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> httpx.Response:
        """A request under the retry policy; ``idempotent`` defaults to whether ``method`` is a read."""
        safe = method.upper() in SAFE_METHODS if idempotent is None else idempotent
        return self._retried(lambda: self._send(method, path, **kwargs), idempotent=safe)

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=query(**params)).json()

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, spec: JobSpec | dict[str, Any] | str | Path) -> Job:
        """Submit a job from a spec object, a dict, or a YAML/JSON file path; never sent twice."""
        body = spec_body(spec)
        return Job.model_validate(self._retried(lambda: self._send("POST", "/jobs", json=body), idempotent=False).json())

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._get(f"/jobs/{job_id}"))

    def job_page(self, status: JobStatus | str | None = None, limit: int = 100, cursor: str | None = None) -> JobPage:
        """One page of your jobs, newest first."""
        return JobPage.model_validate(self._get("/jobs", status=status, limit=limit, cursor=cursor))

    def jobs(self, status: JobStatus | str | None = None, page_size: int = 100) -> Iterator[JobSummary]:
        """All your jobs (without specs; ``job(id)`` has it), newest first, fetched page by page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self.job_page(status, page_size, cursor)
            yield from page.items
            if not (cursor := page.next_cursor):
                return

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one within seconds. 409 if it has ended."""
        attempts = 0

        def attempt() -> Job:
            nonlocal attempts
            attempts += 1
            try:
                return Job.model_validate(self._send("POST", f"/jobs/{job_id}/cancel").json())
            except ConflictError:
                if attempts > 1:  # an earlier attempt may have cancelled it before its answer was lost
                    job = self.job(job_id)
                    if job.status is JobStatus.cancelled:
                        return job
                raise

        return self._retried(attempt, idempotent=True)

    def wait(
        self, job_id: str, progress: Progress = True, poll_s: float = 1.0, timeout: float | None = None
    ) -> Job:
        """Poll until the job ends and return it.

        ``progress`` is ``True`` for a live progress bar on stderr, a callback given the
        :class:`Job` after every poll, or ``False``. Raises :class:`WaitTimeout` (a
        ``TimeoutError``) after ``timeout`` seconds; the job itself goes on.
        """
        from nas.client.progress import JobProgress

        deadline = None if timeout is None else time.monotonic() + timeout
        display = JobProgress() if progress is True else None
        best: Trial | None = None
        with display or contextlib.nullcontext():
            while True:
                job = self.job(job_id)
                if display is not None:
                    if job.best_trial_id and (best is None or best.id != job.best_trial_id):
                        best = self.trial(job.best_trial_id)
                    display.update(job, best)
                elif callable(progress):
                    progress(job)
                if job.status.finished:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} still {job.status.value} after {timeout} s")
                time.sleep(poll_s)

    def events(self, job_id: str, since: float | None = None) -> Iterator[Event]:
        """The job's server-sent events as they happen.

        Events are ``job`` (the job changed), ``trial`` (a trial was created or changed),
        ``epoch`` (a running trial reported an epoch), ``reset`` (too many changes at once: read
        the trials again) and, once the job has ended and every change was sent, ``end``, after
        which the iteration stops. ``since`` (Unix seconds) also sends the trials changed since
        then; by default only what changes from now on. A dropped stream is reopened with
        ``Last-Event-ID``, so nothing is missed, up to ``retries`` times in a row. Raises
        :class:`AuthenticationError` if the key is revoked while the stream is open.
        """
        policy = self.settings.retry
        last_id: str | None = None
        retry_ms: int | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            params = query(since=since) if last_id is None else {}
            cause: Exception | None = None
            try:
                stream = connect_sse(self._http, "GET", f"/jobs/{job_id}/events", headers=headers, params=params,
                                     timeout=httpx.Timeout(self.settings.timeout, read=STREAM_READ_TIMEOUT_S))
                with stream as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise error_for(source.response)
                    for sse in source.iter_sse():
                        last_id = sse.id or last_id
                        retry_ms = sse.retry or retry_ms
                        if not sse.data and sse.event == "message":
                            continue  # a bare ``retry:`` hint, not an event
                        failures = 0
                        event = Event.from_sse(sse.event, sse.data, sse.id, sse.retry)
                        if event.event == "denied":
                            raise AuthenticationError(401, (event.data or {}).get("detail", "access denied"))
                        yield event
                        if event.event == "end":
                            return
            except httpx.TransportError as exc:
                cause = exc
            except ServerError as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
                cause = exc
            failures += 1  # the stream broke, or ended before the job did
            if failures > policy.retries:
                raise ConnectionFailed(self.url, cause or RuntimeError("the event stream kept closing"))
            time.sleep(reconnect_delay(policy, failures, retry_ms))

    # -- trials ---------------------------------------------------------------------------

    def trial_page(
        self, job_id: str, state: TrialState | str | None = None, limit: int = 100, cursor: str | None = None
    ) -> TrialPage:
        """One page of a job's trials, in number order."""
        return TrialPage.model_validate(self._get(f"/jobs/{job_id}/trials", state=state, limit=limit, cursor=cursor))

    def trials(self, job_id: str, state: TrialState | str | None = None, page_size: int = 500) -> Iterator[Trial]:
        """All trials of a job in number order, fetched page by page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self.trial_page(job_id, state, page_size, cursor)
            yield from page.items
            if not (cursor := page.next_cursor):
                return

    def trial(self, trial_id: str) -> Trial:
        """One trial with its per-epoch ``history`` and per-layer ``layers``."""
        return Trial.model_validate(self._get(f"/trials/{trial_id}"))

    def pareto(self, job_id: str) -> list[Trial]:
        """The job's non-dominated complete trials under its objectives."""
        return [Trial.model_validate(t) for t in self._get(f"/jobs/{job_id}/pareto")["items"]]

    def download_model(self, trial_id: str, path: str | Path, format: str = "safetensors") -> Path:
        """Save a trial's trained model as ``safetensors`` (weights and masks) or ``onnx``.

        ``path`` is a file, or a folder to hold ``trial-<id>.<format>``; the file appears whole
        or not at all. Returns where it went.
        """
        target = model_target(path, trial_id, check_format(format))
        part = partial_path(target)

        def attempt() -> None:
            with self._http.stream("GET", f"/trials/{trial_id}/model", params={"format": format}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                with part.open("wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)

        try:
            self._retried(attempt, idempotent=True)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return target

    def catalog(self) -> dict[str, Any]:
        """Search spaces, strategies, sparsifiers, datasets and targets, each with its params' JSON Schema."""
        return self._get("/catalog")

"""The asynchronous client: the same calls as :class:`~nas.client.Client`, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import tenacity
from httpx_sse import aconnect_sse

from nas.client._base import (
    RETRY_STATUSES,
    SAFE_METHODS,
    STREAM_READ_TIMEOUT_S,
    UPLOAD_READ_TIMEOUT_S,
    ClientSettings,
    annotation_body,
    check_format,
    merge_spec,
    model_target,
    partial_path,
    query,
    reconnect_delay,
    spec_body,
    trials_dataframe,
)
from nas.client.errors import (
    AuthenticationError,
    ConflictError,
    ConnectionFailed,
    NotFoundError,
    ServerError,
    WaitTimeout,
    error_for,
)
from nas.client.models import Dataset, DatasetPage, Event, Identity, JobPage, Model, ModelPage, TrialPage
from nas.client.uploads import (
    DatasetSource,
    ReportingFile,
    UploadProgress,
    dataset_file,
    dataset_form,
    form_parts,
    upload_reporter,
)
from nas.specs import Job, JobSpec, JobStatus, JobSummary, JsonScalar, Trial, TrialState

if TYPE_CHECKING:
    import pandas

T = TypeVar("T")
Progress = bool | Callable[[Job], Any]


class AsyncClient:
    """Asynchronous client of the REST API; ``async with AsyncClient() as client: ...``.

    Takes the same arguments as :class:`~nas.client.Client`; ``transport=httpx.ASGITransport(app)``
    talks to an app in-process.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.settings = ClientSettings(url, api_key, timeout, retries, backoff, headers)
        self._http = httpx.AsyncClient(
            base_url=self.settings.api_url, headers=self.settings.headers, transport=transport, timeout=timeout
        )

    @property
    def url(self) -> str:
        return self.settings.url

    def dashboard_url(self, job_id: str | None = None) -> str:
        """The web dashboard's page of ``job_id`` (or its jobs list)."""
        return self.settings.dashboard_url(job_id)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests -------------------------------------------------------------------------

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise error_for(response)
        return response

    async def _delete(self, path: str) -> None:
        """DELETE ``path``, retried; a 404 after the first attempt means an earlier attempt deleted it
        before its answer was lost, so it counts as done."""
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            try:
                await self._send("DELETE", path)
            except NotFoundError:
                if attempts == 1:
                    raise

        await self._retried(attempt, idempotent=True)

    async def _retried(self, attempt: Callable[[], Awaitable[T]], idempotent: bool) -> T:
        try:
            async for trying in tenacity.AsyncRetrying(**self.settings.retry.options(idempotent)):
                with trying:
                    result = await attempt()
            return result
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, exc) from exc

    async def _request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        """A request under the retry policy; ``idempotent`` defaults to whether ``method`` is a read."""
        safe = method.upper() in SAFE_METHODS if idempotent is None else idempotent
        return await self._retried(lambda: self._send(method, path, **kwargs), idempotent=safe)

    async def _get(self, path: str, **params: Any) -> Any:
        return (await self._request("GET", path, params=query(**params))).json()

    # -- jobs -----------------------------------------------------------------------------

    async def submit(self, spec: JobSpec | dict[str, Any] | str | Path) -> Job:
        """Submit a job from a spec object, a dict, or a YAML/JSON file path; never sent twice."""
        body = spec_body(spec)
        response = await self._retried(lambda: self._send("POST", "/jobs", json=body), idempotent=False)
        return Job.model_validate(response.json())

    async def job(self, job_id: str) -> Job:
        return Job.model_validate(await self._get(f"/jobs/{job_id}"))

    async def job_page(
        self, status: JobStatus | str | None = None, limit: int = 100, cursor: str | None = None
    ) -> JobPage:
        """One page of your jobs, newest first."""
        return JobPage.model_validate(await self._get("/jobs", status=status, limit=limit, cursor=cursor))

    async def jobs(self, status: JobStatus | str | None = None, page_size: int = 100) -> AsyncIterator[JobSummary]:
        """All your jobs, newest first: ``async for job in client.jobs(): ...``."""
        cursor: str | None = None
        while True:
            page = await self.job_page(status, page_size, cursor)
            for job in page.items:
                yield job
            if not (cursor := page.next_cursor):
                return

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one within seconds. 409 if it has ended."""
        attempts = 0

        async def attempt() -> Job:
            nonlocal attempts
            attempts += 1
            try:
                return Job.model_validate((await self._send("POST", f"/jobs/{job_id}/cancel")).json())
            except ConflictError:
                if attempts > 1:  # an earlier attempt may have cancelled it before its answer was lost
                    job = await self.job(job_id)
                    if job.status is JobStatus.cancelled:
                        return job
                raise

        return await self._retried(attempt, idempotent=True)

    async def extend_job(self, job_id: str, *, max_trials: int | None = None, timeout_s: float | None = None) -> Job:
        """Raise a job's budget; as :meth:`nas.client.Client.extend_job`."""
        budget = {name: value for name, value in (("max_trials", max_trials), ("timeout_s", timeout_s)) if value is not None}
        if not budget:
            raise ValueError("give max_trials, timeout_s or both")
        response = await self._request("PATCH", f"/jobs/{job_id}", idempotent=True, json={"budget": budget})
        return Job.model_validate(response.json())

    async def clone_job(self, job_id: str, **changes: Any) -> Job:
        """Submit a new job from an existing job's spec with ``changes`` merged in; as :meth:`nas.client.Client.clone_job`."""
        return await self.submit(merge_spec((await self.job(job_id)).spec, changes))

    async def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its trials and model files. 409 while it is queued or running: cancel it first."""
        await self._delete(f"/jobs/{job_id}")

    async def whoami(self) -> Identity:
        """The owner this client's key signs in as, and whether it is an admin key."""
        return Identity.model_validate(await self._get("/whoami"))

    async def wait(
        self, job_id: str, progress: Progress = True, poll_s: float = 1.0, timeout: float | None = None
    ) -> Job:
        """Poll until the job ends and return it; ``progress`` as in :meth:`Client.wait` (a callback
        may also be a coroutine function)."""
        from nas.client.progress import JobProgress

        deadline = None if timeout is None else time.monotonic() + timeout
        display = JobProgress() if progress is True else None
        best: Trial | None = None
        with display or contextlib.nullcontext():
            while True:
                job = await self.job(job_id)
                if display is not None:
                    if job.best_trial_id and (best is None or best.id != job.best_trial_id):
                        best = await self.trial(job.best_trial_id)
                    display.update(job, best)
                elif callable(progress):
                    result = progress(job)
                    if asyncio.iscoroutine(result):
                        await result
                if job.status.finished:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} still {job.status.value} after {timeout} s")
                await asyncio.sleep(poll_s)

    async def events(self, job_id: str, since: float | None = None) -> AsyncIterator[Event]:
        """The job's server-sent events as they happen: ``async for event in client.events(id)``.

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
                stream = aconnect_sse(self._http, "GET", f"/jobs/{job_id}/events", headers=headers, params=params,
                                     timeout=httpx.Timeout(self.settings.timeout, read=STREAM_READ_TIMEOUT_S))
                async with stream as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        raise error_for(source.response)
                    async for sse in source.aiter_sse():
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
            await asyncio.sleep(reconnect_delay(policy, failures, retry_ms))

    # -- trials ---------------------------------------------------------------------------

    async def trial_page(
        self, job_id: str, state: TrialState | str | None = None, limit: int = 100, cursor: str | None = None
    ) -> TrialPage:
        """One page of a job's trials, in number order."""
        data = await self._get(f"/jobs/{job_id}/trials", state=state, limit=limit, cursor=cursor)
        return TrialPage.model_validate(data)

    async def trials(
        self, job_id: str, state: TrialState | str | None = None, page_size: int = 500
    ) -> AsyncIterator[Trial]:
        """All trials of a job in number order: ``async for trial in client.trials(id): ...``."""
        cursor: str | None = None
        while True:
            page = await self.trial_page(job_id, state, page_size, cursor)
            for trial in page.items:
                yield trial
            if not (cursor := page.next_cursor):
                return

    async def trial(self, trial_id: str) -> Trial:
        """One trial with its per-epoch ``history`` and per-layer ``layers``."""
        return Trial.model_validate(await self._get(f"/trials/{trial_id}"))

    async def trial_log(self, trial_id: str) -> str:
        """The trial's log and traceback; see :meth:`Client.trial_log`."""
        return (await self._request("GET", f"/trials/{trial_id}/log")).text

    async def trials_csv(self, job_id: str) -> str:
        """Every trial of the job as CSV; see :meth:`Client.trials_csv`."""
        return (await self._request("GET", f"/jobs/{job_id}/trials.csv")).text

    async def trials_dataframe(self, job_id: str) -> pandas.DataFrame:
        """:meth:`trials_csv` as a pandas DataFrame; see :meth:`Client.trials_dataframe`."""
        return trials_dataframe(await self.trials_csv(job_id))

    async def pareto(self, job_id: str) -> list[Trial]:
        """The job's non-dominated complete trials under its objectives."""
        return [Trial.model_validate(t) for t in (await self._get(f"/jobs/{job_id}/pareto"))["items"]]

    # -- notes and user attributes ------------------------------------------------------

    async def annotate_job(
        self, job_id: str, note: str | None = None, user_attrs: Mapping[str, JsonScalar | None] | None = None
    ) -> Job:
        """Set a job's note (``""`` clears it) and merge ``user_attrs`` into its attributes (``None`` removes a key)."""
        body = annotation_body(note, user_attrs)
        response = await self._request("PATCH", f"/jobs/{job_id}", idempotent=True, json=body)
        return Job.model_validate(response.json())

    async def annotate_trial(
        self, trial_id: str, note: str | None = None, user_attrs: Mapping[str, JsonScalar | None] | None = None
    ) -> Trial:
        """Set a trial's note (``""`` clears it) and merge ``user_attrs`` into its attributes (``None`` removes a key)."""
        body = annotation_body(note, user_attrs)
        response = await self._request("PATCH", f"/trials/{trial_id}", idempotent=True, json=body)
        return Trial.model_validate(response.json())

    async def download_model(self, trial_id: str, path: str | Path, format: str = "safetensors") -> Path:
        """Save a trial's trained model in ``format`` (``safetensors``, ``onnx``, ``inference`` or ``report``);
        see :meth:`Client.download_model`."""
        target = model_target(path, trial_id, check_format(format))
        part = partial_path(target)

        async def attempt() -> None:
            async with self._http.stream("GET", f"/trials/{trial_id}/model", params={"format": format}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_for(response)
                with part.open("wb") as f:
                    async for chunk in response.aiter_bytes():
                        f.write(chunk)

        try:
            await self._retried(attempt, idempotent=True)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return target

    async def model_report(self, trial_id: str) -> dict[str, Any]:
        """A trial's per-layer sparsity report; see :meth:`Client.model_report`."""
        return await self._get(f"/trials/{trial_id}/model", format="report")

    async def catalog(self) -> dict[str, Any]:
        """Search spaces, strategies, sparsifiers, datasets and targets, each with its params' JSON Schema."""
        return await self._get("/catalog")

    # -- targets --------------------------------------------------------------------------

    async def targets(self) -> list[dict[str, Any]]:
        """The server's own targets and yours: agents (online, last seen, queue, measurements) and predictor accuracy."""
        return (await self._get("/targets"))["items"]

    async def target(self, name: str) -> dict[str, Any]:
        return await self._get(f"/targets/{name}")

    async def calibrate_target(self, name: str, *, quick: bool = True, runtime: str | None = None) -> dict[str, Any]:
        """Start calibrating an agent target's predictor through its agents; poll :meth:`calibration`."""
        body = {"quick": quick, "runtime": runtime}
        response = await self._retried(lambda: self._send("POST", f"/targets/{name}/calibrations", json=body), idempotent=False)
        return response.json()

    async def calibration(self, name: str, calibration_id: str) -> dict[str, Any]:
        return await self._get(f"/targets/{name}/calibrations/{calibration_id}")

    # -- datasets -------------------------------------------------------------------------

    async def upload_dataset(
        self,
        source: DatasetSource,
        *,
        name: str | None = None,
        label_column: str | None = None,
        image_size: int | None = None,
        color: str | None = None,
        test_fraction: float | None = None,
        split_seed: int | None = None,
        progress: UploadProgress = True,
    ) -> Dataset:
        """Upload a dataset and return it as stored; see :meth:`Client.upload_dataset` (a
        ``progress`` callback is called, not awaited, as the file is read). Safe to repeat: the
        same content with the same options is stored once, so it is retried as reads are."""
        form = dataset_form(name=name, label_column=label_column, image_size=image_size, color=color,
                            test_fraction=test_fraction, split_seed=split_seed)
        with dataset_file(source) as path, path.open("rb") as file:
            total = os.fstat(file.fileno()).st_size
            with upload_reporter(progress, path.name, total) as report:
                parts = {**form_parts(form), "file": (path.name, ReportingFile(file, report))}
                response = await self._request("POST", "/datasets", idempotent=True, files=parts,
                                               timeout=httpx.Timeout(self.settings.timeout, read=UPLOAD_READ_TIMEOUT_S))
        return Dataset.model_validate(response.json())

    async def register_dataset(
        self,
        path: str,
        *,
        name: str | None = None,
        label_column: str | None = None,
        image_size: int | None = None,
        color: str | None = None,
        test_fraction: float | None = None,
        split_seed: int | None = None,
    ) -> Dataset:
        """Register a dataset by its path on the server, under ``NAS_DATA_ROOTS``; see
        :meth:`Client.register_dataset`."""
        form = dataset_form(path=path, name=name, label_column=label_column, image_size=image_size, color=color,
                            test_fraction=test_fraction, split_seed=split_seed)
        response = await self._request("POST", "/datasets", idempotent=True, files=form_parts(form),
                                       timeout=httpx.Timeout(self.settings.timeout, read=UPLOAD_READ_TIMEOUT_S))
        return Dataset.model_validate(response.json())

    async def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(await self._get(f"/datasets/{dataset_id}"))

    async def dataset_page(self, limit: int = 100, cursor: str | None = None) -> DatasetPage:
        """One page of your datasets, newest first."""
        return DatasetPage.model_validate(await self._get("/datasets", limit=limit, cursor=cursor))

    async def datasets(self, page_size: int = 100) -> AsyncIterator[Dataset]:
        """All your datasets, newest first: ``async for dataset in client.datasets(): ...``."""
        cursor: str | None = None
        while True:
            page = await self.dataset_page(page_size, cursor)
            for dataset in page.items:
                yield dataset
            if not (cursor := page.next_cursor):
                return

    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset and its stored files. 409 while a queued or running job uses it."""
        await self._delete(f"/datasets/{dataset_id}")

    # -- models ---------------------------------------------------------------------------

    async def upload_model(
        self, path: str | os.PathLike[str], *, name: str | None = None, progress: UploadProgress = True
    ) -> Model:
        """Upload a trained network as an ONNX file and return it as stored; see :meth:`Client.upload_model`."""
        source = Path(path)
        with source.open("rb") as file:
            total = os.fstat(file.fileno()).st_size
            with upload_reporter(progress, source.name, total) as report:
                parts = {**form_parts(dataset_form(name=name)), "file": (source.name, ReportingFile(file, report))}
                response = await self._request("POST", "/models", idempotent=True, files=parts,
                                               timeout=httpx.Timeout(self.settings.timeout, read=UPLOAD_READ_TIMEOUT_S))
        return Model.model_validate(response.json())

    async def model(self, model_id: str) -> Model:
        return Model.model_validate(await self._get(f"/models/{model_id}"))

    async def model_page(self, limit: int = 100, cursor: str | None = None) -> ModelPage:
        """One page of your models, newest first."""
        return ModelPage.model_validate(await self._get("/models", limit=limit, cursor=cursor))

    async def models(self, page_size: int = 100) -> AsyncIterator[Model]:
        """All your models, newest first: ``async for model in client.models(): ...``."""
        cursor: str | None = None
        while True:
            page = await self.model_page(page_size, cursor)
            for model in page.items:
                yield model
            if not (cursor := page.next_cursor):
                return

    async def delete_model(self, model_id: str) -> None:
        """Delete a model and its stored file. 409 while a queued or running job searches it."""
        await self._delete(f"/models/{model_id}")

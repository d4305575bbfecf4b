"""The synchronous client."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import tenacity
from httpx_sse import connect_sse

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

    def _delete(self, path: str) -> None:
        """DELETE ``path``, retried; a 404 after the first attempt means an earlier attempt deleted it
        before its answer was lost, so it counts as done."""
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self._send("DELETE", path)
            except NotFoundError:
                if attempts == 1:
                    raise

        self._retried(attempt, idempotent=True)

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

    def extend_job(self, job_id: str, *, max_trials: int | None = None, timeout_s: float | None = None) -> Job:
        """Raise a job's budget: a running job's runner takes it up within seconds, a finished job
        is queued again and resumed with its trials (its ``timeout_s`` counts from the restart).
        A value that would go down, or pass the server's limits, raises :class:`ValidationError`;
        one the job already has changes nothing, so the call is safe to repeat."""
        budget = {name: value for name, value in (("max_trials", max_trials), ("timeout_s", timeout_s)) if value is not None}
        if not budget:
            raise ValueError("give max_trials, timeout_s or both")
        return Job.model_validate(self._request("PATCH", f"/jobs/{job_id}", idempotent=True, json={"budget": budget}).json())

    def clone_job(self, job_id: str, **changes: Any) -> Job:
        """Submit a new job made from an existing job's spec with ``changes`` merged in (see
        :func:`~nas.client._base.merge_spec`): ``clone_job(id, name="wider", budget={"max_trials": 50})``."""
        return self.submit(merge_spec(self.job(job_id).spec, changes))

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its trials and model files. 409 while it is queued or running: cancel it first."""
        self._delete(f"/jobs/{job_id}")

    def whoami(self) -> Identity:
        """The owner this client's key signs in as, and whether it is an admin key."""
        return Identity.model_validate(self._get("/whoami"))

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

    def trial_log(self, trial_id: str) -> str:
        """The trial's log: what its code logged and warned on its worker, and its traceback if it
        failed (the end, size-capped). :class:`NotFoundError` says why a trial has none (queued, still running)."""
        return self._request("GET", f"/trials/{trial_id}/log").text

    def trials_csv(self, job_id: str) -> str:
        """Every trial of the job as CSV: ``id``, ``number``, ``state``, one ``arch.KEY`` column per
        architecture key, the metrics, ``started_at``, ``finished_at`` (``GET /jobs/{id}/trials.csv``)."""
        return self._request("GET", f"/jobs/{job_id}/trials.csv").text

    def trials_dataframe(self, job_id: str) -> pandas.DataFrame:
        """:meth:`trials_csv` as a pandas DataFrame, one row per trial (needs pandas)."""
        return trials_dataframe(self.trials_csv(job_id))

    def pareto(self, job_id: str) -> list[Trial]:
        """The job's non-dominated complete trials under its objectives."""
        return [Trial.model_validate(t) for t in self._get(f"/jobs/{job_id}/pareto")["items"]]

    # -- notes and user attributes ------------------------------------------------------

    def annotate_job(
        self, job_id: str, note: str | None = None, user_attrs: Mapping[str, JsonScalar | None] | None = None
    ) -> Job:
        """Set a job's note (``""`` clears it) and merge ``user_attrs`` into its attributes (``None`` removes a key)."""
        body = annotation_body(note, user_attrs)
        return Job.model_validate(self._request("PATCH", f"/jobs/{job_id}", idempotent=True, json=body).json())

    def annotate_trial(
        self, trial_id: str, note: str | None = None, user_attrs: Mapping[str, JsonScalar | None] | None = None
    ) -> Trial:
        """Set a trial's note (``""`` clears it) and merge ``user_attrs`` into its attributes (``None`` removes a key)."""
        body = annotation_body(note, user_attrs)
        return Trial.model_validate(self._request("PATCH", f"/trials/{trial_id}", idempotent=True, json=body).json())

    def download_model(self, trial_id: str, path: str | Path, format: str = "safetensors") -> Path:
        """Save a trial's trained model in ``format``, one of :data:`nas.model_formats.FORMATS`.

        ``safetensors``: the stored masked model (weights and masks); ``onnx``: the sparse
        inference model its latency was measured on (removed units gone; layers that run as CSR in
        torch stored dense with their zeros, since onnxruntime has no faster kernel for them),
        checked against torch in onnxruntime; ``inference``: the torch sparse inference model, CSR
        layers included, for :func:`nas.export.load_inference_model`; ``report``: the per-layer
        sparsity report (JSON; :meth:`model_report` reads it). ``path`` is a file, or a folder to
        hold ``trial-<id>.<suffix>``; the file appears whole or not at all. Returns where it went.
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

    def model_report(self, trial_id: str) -> dict[str, Any]:
        """A trial's per-layer sparsity report: each prunable layer's shape, density, pattern, kernel
        and how the ONNX file holds it, with the ONNX check and its measured latency beside torch's."""
        return self._get(f"/trials/{trial_id}/model", format="report")

    def catalog(self) -> dict[str, Any]:
        """Search spaces, strategies, sparsifiers, datasets and targets, each with its params' JSON Schema."""
        return self._get("/catalog")

    # -- targets --------------------------------------------------------------------------

    def targets(self) -> list[dict[str, Any]]:
        """The server's own targets and yours: agents (online, last seen, queue, measurements) and predictor accuracy."""
        return self._get("/targets")["items"]

    def target(self, name: str) -> dict[str, Any]:
        return self._get(f"/targets/{name}")

    def calibrate_target(self, name: str, *, quick: bool = True, runtime: str | None = None) -> dict[str, Any]:
        """Start calibrating an agent target's predictor through its agents; poll :meth:`calibration`."""
        body = {"quick": quick, "runtime": runtime}
        return self._retried(lambda: self._send("POST", f"/targets/{name}/calibrations", json=body), idempotent=False).json()

    def calibration(self, name: str, calibration_id: str) -> dict[str, Any]:
        return self._get(f"/targets/{name}/calibrations/{calibration_id}")

    # -- datasets -------------------------------------------------------------------------

    def upload_dataset(
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
        """Upload a dataset and return it as stored, ready for a job's ``dataset: {name: upload,
        params: {id: dataset.id}}``.

        ``source`` is a file (``.npz`` with ``x``, ``y`` and optionally ``x_test``, ``y_test``;
        ``.csv`` or ``.parquet`` with a ``label_column``; a ``.zip``, ``.tar`` or ``.tar.gz`` of
        images in one folder per class, resized to ``image_size`` in ``color`` ``grayscale`` or
        ``rgb``), or arrays: ``(x, y)`` or a dict of those four names, sent as a temporary
        ``.npz`` (needs numpy). The file is streamed from disk, never held whole in memory.
        Options not given take the server's defaults; without a test split the server makes a
        stratified one (``test_fraction``, ``split_seed``) once, for every job.
        ``progress`` is ``True`` for a live bar on stderr, a callback given (bytes sent, bytes
        in all), or ``False``.

        The same content with the same options is stored once per owner: uploading it again
        answers the stored dataset. That makes an upload safe to repeat, so it is retried as
        reads are (on connection errors and 502, 503, 504), sending the file again. Raises
        :class:`PayloadTooLarge` (413: over the upload limit or your storage quota) and
        :class:`ValidationError` (422: what is wrong with the data or which option).
        """
        form = dataset_form(name=name, label_column=label_column, image_size=image_size, color=color,
                            test_fraction=test_fraction, split_seed=split_seed)
        with dataset_file(source) as path, path.open("rb") as file:
            total = os.fstat(file.fileno()).st_size
            with upload_reporter(progress, path.name, total) as report:
                parts = {**form_parts(form), "file": (path.name, ReportingFile(file, report))}
                response = self._request("POST", "/datasets", idempotent=True, files=parts,
                                         timeout=httpx.Timeout(self.settings.timeout, read=UPLOAD_READ_TIMEOUT_S))
        return Dataset.model_validate(response.json())

    def register_dataset(
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
        """Register a dataset too large to upload by its path (or ``file://`` URI) on the server,
        under one of the folders its admin allows (``NAS_DATA_ROOTS``), which every worker reads
        too. Same formats and options as :meth:`upload_dataset`, and as safe to repeat."""
        form = dataset_form(path=path, name=name, label_column=label_column, image_size=image_size, color=color,
                            test_fraction=test_fraction, split_seed=split_seed)
        response = self._request("POST", "/datasets", idempotent=True, files=form_parts(form),
                                 timeout=httpx.Timeout(self.settings.timeout, read=UPLOAD_READ_TIMEOUT_S))
        return Dataset.model_validate(response.json())

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._get(f"/datasets/{dataset_id}"))

    def dataset_page(self, limit: int = 100, cursor: str | None = None) -> DatasetPage:
        """One page of your datasets, newest first."""
        return DatasetPage.model_validate(self._get("/datasets", limit=limit, cursor=cursor))

    def datasets(self, page_size: int = 100) -> Iterator[Dataset]:
        """All your datasets, newest first, fetched page by page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self.dataset_page(page_size, cursor)
            yield from page.items
            if not (cursor := page.next_cursor):
                return

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset and its stored files. 409 while a queued or running job uses it."""
        self._delete(f"/datasets/{dataset_id}")

    # -- models ---------------------------------------------------------------------------

    def upload_model(self, path: str | os.PathLike[str], *, name: str | None = None, progress: UploadProgress = True) -> Model:
        """Upload a trained network as an ONNX file (weights inside it) and return it as stored,
        ready for a job's ``search_space: {name: model_sparsity, params: {model_id: model.id}}``.

        The server checks it (onnx's checker, opset, no external data, size, a supported
        operator set), converts it to torch, compares the outputs with onnxruntime's and times the
        dense network on its targets; the answer holds its input shape, parameters, prunable
        layers and ``dense_latency_ms``. ``name`` defaults to the file's name. ``progress`` as in
        :meth:`upload_dataset`. The same file is stored once per owner, so an upload is safe to
        repeat and is retried as reads are. Raises :class:`PayloadTooLarge` (413: over
        ``NAS_LIMIT_MODEL_BYTES`` or your storage quota) and :class:`ValidationError` (422: the
        check that failed, naming the operator).
        """
        source = Path(path)
        with source.open("rb") as file:
            total = os.fstat(file.fileno()).st_size
            with upload_reporter(progress, source.name, total) as report:
                parts = {**form_parts(dataset_form(name=name)), "file": (source.name, ReportingFile(file, report))}
                response = self._request("POST", "/models", idempotent=True, files=parts,
                                         timeout=httpx.Timeout(self.settings.timeout, read=UPLOAD_READ_TIMEOUT_S))
        return Model.model_validate(response.json())

    def model(self, model_id: str) -> Model:
        return Model.model_validate(self._get(f"/models/{model_id}"))

    def model_page(self, limit: int = 100, cursor: str | None = None) -> ModelPage:
        """One page of your models, newest first."""
        return ModelPage.model_validate(self._get("/models", limit=limit, cursor=cursor))

    def models(self, page_size: int = 100) -> Iterator[Model]:
        """All your models, newest first, fetched page by page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self.model_page(page_size, cursor)
            yield from page.items
            if not (cursor := page.next_cursor):
                return

    def delete_model(self, model_id: str) -> None:
        """Delete a model and its stored file. 409 while a queued or running job searches it."""
        self._delete(f"/models/{model_id}")

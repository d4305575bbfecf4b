"""Python SDK for the sparse-nas REST API.

Light on purpose: importing it pulls in neither torch nor ray, so notebooks and CI scripts can
drive a remote server. Pass ``transport=httpx.ASGITransport(app)`` to talk to an app in-process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from nas.specs import Job, JobSpec, Trial, TrialState

DEFAULT_URL = "http://127.0.0.1:8000"


class ApiError(Exception):
    """The server answered with an error; ``status`` and ``detail`` say which."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {_describe(detail)}")


class AuthenticationError(ApiError):
    """401: the API key is missing, wrong or revoked."""


class NotFoundError(ApiError):
    """404: no such job or trial, or it belongs to another owner."""


class ConflictError(ApiError):
    """409: the change is not allowed in the current state (e.g. cancelling a finished job)."""


class SpecError(ApiError):
    """422: the job spec (or a query) is invalid; ``errors`` lists field paths and messages."""

    @property
    def errors(self) -> list[tuple[str, str]]:
        if not isinstance(self.detail, list):
            return [("", str(self.detail))]
        return [(".".join(str(p) for p in e.get("loc", []) if p != "body"), e.get("msg", "")) for e in self.detail]


class ServerError(ApiError):
    """5xx: the server failed. ``request_id`` (from the ``X-Request-ID`` header) finds the failure
    in the server's log; quote it when reporting the problem."""

    def __init__(self, status: int, detail: Any, request_id: str | None = None) -> None:
        super().__init__(status, detail)
        self.request_id = request_id
        if request_id:
            self.args = (f"{self.args[0]} (request id {request_id})",)


_ERRORS: dict[int, type[ApiError]] = {401: AuthenticationError, 404: NotFoundError, 409: ConflictError, 422: SpecError}


def _describe(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body')}: {e.get('msg')}" for e in detail
        )
    return str(detail)


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a job spec from a YAML or JSON file."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a job spec must be a mapping, got {type(data).__name__}")
    return data


class Client:
    """Synchronous client. ``url`` and ``api_key`` default to ``NAS_URL`` and ``NAS_API_KEY``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = (url or os.environ.get("NAS_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("NAS_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, transport=transport, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            if response.status_code >= 500:
                raise ServerError(response.status_code, detail, response.headers.get("x-request-id"))
            raise _ERRORS.get(response.status_code, ApiError)(response.status_code, detail)
        return response

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, spec: JobSpec | dict[str, Any] | str | Path) -> Job:
        """Submit a job from a spec object, a dict, or a YAML/JSON file path."""
        if isinstance(spec, (str, Path)):
            body = load_spec(spec)
        elif isinstance(spec, JobSpec):
            body = spec.model_dump(mode="json")
        else:
            body = spec
        return Job.model_validate(self._request("POST", "/jobs", json=body).json())

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def jobs(self, status: str | None = None, page_size: int = 100) -> Iterator[Job]:
        for item in self._pages("/jobs", {"status": status, "limit": page_size}):
            yield Job.model_validate(item)

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def wait(
        self,
        job_id: str,
        progress: bool | Callable[[Job], None] = True,
        poll_s: float = 1.0,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job ends; ``progress`` is a rich progress bar, a callback, or off."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress is True:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            bar.start()
            task = bar.add_task(job_id[:8], total=None)
        try:
            while True:
                job = self.job(job_id)
                if bar is not None:
                    total = job.spec.get("budget", {}).get("max_trials")
                    bar.update(task, total=total, completed=job.n_finished, description=f"{job.name} [{job.status.value}]")
                elif callable(progress):
                    progress(job)
                if job.status.finished:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout} s")
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.stop()

    # -- trials ---------------------------------------------------------------------------

    def trials(self, job_id: str, state: TrialState | str | None = None, page_size: int = 500) -> Iterator[Trial]:
        """All trials of a job in number order, fetched page by page."""
        state_value = state.value if isinstance(state, TrialState) else state
        for item in self._pages(f"/jobs/{job_id}/trials", {"state": state_value, "limit": page_size}):
            yield Trial.model_validate(item)

    def trial(self, trial_id: str) -> Trial:
        return Trial.model_validate(self._request("GET", f"/trials/{trial_id}").json())

    def pareto(self, job_id: str) -> list[Trial]:
        return [Trial.model_validate(t) for t in self._request("GET", f"/jobs/{job_id}/pareto").json()["items"]]

    def download_model(self, trial_id: str, path: str | Path, format: str = "safetensors") -> Path:
        target = Path(path)
        response = self._request("GET", f"/trials/{trial_id}/model", params={"format": format})
        target.write_bytes(response.content)
        return target

    def catalog(self) -> dict[str, Any]:
        return self._request("GET", "/catalog").json()

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self._request("GET", path, params=query).json()
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

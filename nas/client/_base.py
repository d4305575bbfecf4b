"""What the sync and async clients share: settings, the retry policy, request bodies and paths."""

from __future__ import annotations

import enum
import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pydantic
import tenacity
import yaml

from nas.client.errors import ServerError
from nas.model_formats import FORMATS, SUFFIXES
from nas.specs import Annotation, JobSpec, JsonScalar

if TYPE_CHECKING:
    import pandas

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
MODEL_FORMATS = FORMATS
# Answers of a proxy or a restarting server: the request may succeed if sent again.
RETRY_STATUSES = frozenset({502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The server writes at least a keep-alive comment every 15 s; silence this long is a dead stream.
STREAM_READ_TIMEOUT_S = 60.0
# A dataset is read (checked, split, stored) before the answer comes: up to NAS_INGEST_TIMEOUT_S on
# the server (900 s by default), with room for a server configured to allow more.
UPLOAD_READ_TIMEOUT_S = 3600.0

log = logging.getLogger("nas.client")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for calls that are safe to repeat.

    A call is retried ``retries`` times at most, ``backoff`` seconds after the first failure,
    doubling each time up to ``max_backoff`` (a server's ``Retry-After`` takes precedence, within
    the same cap). Idempotent calls (reads, and cancel) retry on any connection error and on 502,
    503 and 504; other calls (submit) only when the connection was never made, so a job is never
    submitted twice.
    """

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 10.0

    def retryable(self, exc: BaseException, idempotent: bool) -> bool:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            return True  # the request never reached the server
        if not idempotent:
            return False
        if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
            return True
        return isinstance(exc, ServerError) and exc.status in RETRY_STATUSES

    def options(self, idempotent: bool) -> dict[str, Any]:
        """Keyword arguments for ``tenacity.Retrying`` / ``tenacity.AsyncRetrying``."""
        backoff = tenacity.wait_exponential_jitter(multiplier=self.backoff, max=self.max_backoff, jitter=self.backoff)

        def wait(state: tenacity.RetryCallState) -> float:
            hinted = getattr(state.outcome.exception() if state.outcome else None, "retry_after", None)
            return min(hinted, self.max_backoff) if hinted is not None else backoff(state)

        return {
            "stop": tenacity.stop_after_attempt(self.retries + 1),
            "wait": wait,
            "retry": tenacity.retry_if_exception(lambda exc: self.retryable(exc, idempotent)),
            "before_sleep": _log_retry,
            "reraise": True,
        }


def reconnect_delay(policy: RetryPolicy, failures: int, retry_ms: int | None) -> float:
    """Seconds before reopening an event stream: the server's ``retry`` hint, else the backoff."""
    if retry_ms is not None:
        return min(retry_ms / 1000, policy.max_backoff)
    return min(policy.backoff * 2 ** (failures - 1), policy.max_backoff)


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info("retrying after attempt %d failed: %s", state.attempt_number, exc)


class ClientSettings:
    """Where to connect and as whom; ``url`` and ``api_key`` default to ``NAS_URL`` / ``NAS_API_KEY``."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        headers: dict[str, str] | None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = server_url(url)
        self.api_key = api_key if api_key is not None else os.environ.get("NAS_API_KEY")
        self.timeout = timeout
        self.retry = RetryPolicy(retries=retries, backoff=backoff)
        self.headers = {"User-Agent": f"sparse-nas-client/{_version()}", **(headers or {})}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"

    @property
    def api_url(self) -> str:
        return f"{self.url}{API_PREFIX}"

    def dashboard_url(self, job_id: str | None = None) -> str:
        return dashboard_url(self.url, job_id)


def server_url(url: str | None = None) -> str:
    """``url``, else ``NAS_URL``, else the default, without a trailing slash."""
    return (url or os.environ.get("NAS_URL") or DEFAULT_URL).rstrip("/")


def dashboard_url(url: str | None = None, job_id: str | None = None) -> str:
    """The web dashboard's page of a job (or its jobs list) on the server at ``url``."""
    base = server_url(url)
    return f"{base}/#/jobs/{job_id}" if job_id else f"{base}/#/jobs"


def _version() -> str:
    from nas import __version__

    return __version__


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a job spec from a YAML or JSON file (JSON is YAML)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a job spec must be a mapping, got {type(data).__name__}")
    return data


def spec_body(spec: JobSpec | dict[str, Any] | str | Path) -> dict[str, Any]:
    """The JSON body of a submission: from a spec object, a dict, or a YAML/JSON file path."""
    if isinstance(spec, (str, Path)):
        return load_spec(spec)
    if isinstance(spec, JobSpec):
        return spec.model_dump(mode="json")
    if isinstance(spec, dict):
        return spec
    raise TypeError(f"a job spec is a JobSpec, a dict or a file path, not {type(spec).__name__}")


def merge_spec(spec: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``changes`` merged in, as a cloned job's edits: mappings merge key by key
    (``budget: {max_trials: 50}`` keeps the rest of the budget), except a plug-in reference given
    another ``name``, which replaces the old one with its params; anything else is replaced."""
    merged = dict(spec)
    for key, value in changes.items():
        old = merged.get(key)
        renamed = isinstance(value, dict) and isinstance(old, dict) and "name" in value and value["name"] != old.get("name")
        merged[key] = merge_spec(old, value) if isinstance(value, dict) and isinstance(old, dict) and not renamed else value
    return merged


def query(**params: Any) -> dict[str, Any]:
    """Query parameters without the unset ones; enums as their values."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in params.items() if v is not None}


def check_format(format: str) -> str:
    if format not in MODEL_FORMATS:
        raise ValueError(f"format must be one of {', '.join(MODEL_FORMATS)}, got {format!r}")
    return format


def model_target(path: str | Path, trial_id: str, format: str) -> Path:
    """Where a download goes: ``path``, or ``trial-<id>.<suffix>`` inside it when it is a folder
    (``trial-<id>.onnx``, ``trial-<id>.inference.safetensors``, ``trial-<id>.report.json`` ...)."""
    target = Path(path)
    return target / f"trial-{trial_id}.{SUFFIXES[format]}" if target.is_dir() else target


def partial_path(target: Path) -> Path:
    """A download is written here first, then renamed, so ``target`` is never half a file."""
    return target.with_name(f".{target.name}.part")


_SCALAR_KINDS = frozenset({"str", "int", "float", "bool"})
"""The members of :data:`nas.specs.JsonScalar`, as pydantic names them in an error's location."""


def annotation_body(note: str | None, user_attrs: Mapping[str, JsonScalar | None] | None) -> dict[str, Any]:
    """A PATCH body with what is given, checked as the server checks it; ``ValueError`` when nothing is."""
    given = {name: value for name, value in (("note", note), ("user_attrs", user_attrs)) if value is not None}
    if not given:
        raise ValueError("give a note, user_attrs or both")
    try:
        return Annotation.model_validate(given).model_dump(mode="json", exclude_unset=True)
    except pydantic.ValidationError as exc:  # said as the server would: the field, then what is wrong
        said: dict[str, str] = {}
        for error in exc.errors():
            *where, last = map(str, error["loc"])
            if last in _SCALAR_KINDS:  # one error per member of the scalar union: one message for the value
                said[".".join(where)] = "expected text, a number, true/false or null"
            else:
                said[".".join([*where, last])] = error["msg"]
        raise ValueError("; ".join(f"{field}: {msg}" for field, msg in said.items())) from None


def trials_dataframe(text: str) -> pandas.DataFrame:
    """The CSV of ``GET /jobs/{id}/trials.csv`` as a DataFrame: ids as text (an id of digits and one
    ``e`` would read as a number), the times as datetimes. pandas is imported here, on first use: the
    light client does not need it."""
    try:
        import pandas
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "Client.trials_dataframe needs pandas: pip install pandas (the 'server' extra brings it too); "
            "Client.trials_csv gives the same table as CSV text without it",
            name="pandas",
        ) from None
    return pandas.read_csv(io.StringIO(text), dtype={"id": str, "state": str}, parse_dates=["started_at", "finished_at"])


def objective_metric(spec: dict[str, Any]) -> str | None:
    objectives = spec.get("objectives") or []
    return objectives[0].get("metric") if objectives else None

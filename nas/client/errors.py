"""The SDK's exceptions: one class per kind of failure a caller handles differently.

Everything the SDK raises on purpose is a :class:`nas.errors.NasError`. An answer with an error
status is an :class:`ApiError` subclass chosen by the status, carrying the server's ``detail``
and the ``X-Request-ID`` that finds the request in the server's log.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import httpx

from nas.errors import NasError

REQUEST_ID_HEADER = "x-request-id"


class ConnectionFailed(NasError):
    """The server could not be reached (or stopped answering), after the allowed retries."""

    def __init__(self, url: str, cause: Exception) -> None:
        self.url = url
        super().__init__(f"cannot reach the server at {url}: {cause or type(cause).__name__}")


class WaitTimeout(NasError, TimeoutError):
    """``wait()`` gave up before the job ended; the job itself goes on."""


class ApiError(NasError):
    """The server answered with an error; ``status`` and ``detail`` say which.

    ``request_id`` is the server's id for the request (the ``X-Request-ID`` header); quote it
    when reporting a problem, it finds the request in the server's log. ``retry_after`` is the
    server's ``Retry-After`` in seconds, when it sent one (429, 503).
    """

    retry_after: float | None = None

    def __init__(self, status: int, detail: Any, request_id: str | None = None) -> None:
        self.status = status
        self.detail = detail
        self.request_id = request_id
        super().__init__(f"HTTP {status}: {describe(detail)}")


class AuthenticationError(ApiError):
    """401: the API key is missing, wrong or revoked."""


class NotFoundError(ApiError):
    """404: no such job, trial or model, or it belongs to another owner."""


class ConflictError(ApiError):
    """409: the change is not allowed in the current state (e.g. cancelling a finished job)."""


class PayloadTooLarge(ApiError):
    """413: the request body is larger than the server accepts."""


class FieldError(NamedTuple):
    """One invalid field: its dotted path in the request (``training.epochs``) and why."""

    path: str
    message: str


class ValidationError(ApiError):
    """422: the job spec or a query parameter is invalid; ``errors`` names each bad field."""

    @property
    def errors(self) -> list[FieldError]:
        if not isinstance(self.detail, list):
            return [FieldError("", str(self.detail))]
        return [FieldError(field_path(e.get("loc", [])), str(e.get("msg", ""))) for e in self.detail]


SpecError = ValidationError  # the name earlier releases used


class RateLimited(ApiError):
    """429: too many failed sign-ins from this address, or too many active jobs for this owner.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """


class ServerError(ApiError):
    """5xx: the server failed; the message quotes the request id to report."""

    def __init__(self, status: int, detail: Any, request_id: str | None = None) -> None:
        super().__init__(status, detail, request_id)
        if request_id:
            self.args = (f"{self.args[0]} (request id {request_id})",)


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
}


def field_path(loc: list[Any] | tuple[Any, ...]) -> str:
    """``["body", "training", "epochs"]`` -> ``"training.epochs"``; where the field sits is implied."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts)


def describe(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{field_path(e.get('loc', []))}: {e.get('msg')}" if isinstance(e, dict) else str(e) for e in detail
        )
    return str(detail)


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds; HTTP dates are not worth a parser here."""
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_for(response: httpx.Response) -> ApiError:
    """The exception for an error response, whose body must already be read."""
    try:
        body = response.json()
        detail = body.get("detail", response.text) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text or response.reason_phrase
    request_id = response.headers.get(REQUEST_ID_HEADER)
    status = response.status_code
    kind = ServerError if status >= 500 else _BY_STATUS.get(status, ApiError)
    error = kind(status, detail, request_id)
    error.retry_after = retry_after(response)
    return error

"""Error responses the routes declare in OpenAPI, so clients (and schemathesis) know every status."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_DESCRIPTIONS = {
    401: "missing, invalid or revoked API key",
    403: "the wrong kind of key: an agent key on a user route, or a user key on an agent route",
    404: "unknown, or owned by someone else",
    409: "illegal state change",
    410: "gone: the resource was removed",
    413: "request body too large",
    422: "invalid request, naming the field; or an id prefix that matches more than one resource",
    429: "too many failed authentications from this address, or too many active jobs",
}


class ErrorDetail(BaseModel):
    """Every error answers JSON with ``detail``: a message, or a list of field errors for 422."""

    detail: str | list[dict[str, Any]]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the given statuses plus 401, 403 and 429, which every keyed route has,
    and 422 wherever 404 is: a route that looks an id up takes a unique prefix of it."""
    given = {401, 403, 429, *codes, *((422,) if 404 in codes else ())}
    return {code: {"model": ErrorDetail, "description": _DESCRIPTIONS[code]} for code in sorted(given)}

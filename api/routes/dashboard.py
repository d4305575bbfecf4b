"""The web dashboard's files: the page at ``/`` and its scripts and styles.

Everything ships with the package (``api/dashboard/``): plain JavaScript modules, no build step,
and charts drawn on canvas by the dashboard's own code. The page loads nothing from elsewhere, and
its Content-Security-Policy says so. The page holds no data: it calls the JSON API with the key
the user signs in with.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from nas.errors import NotFound

router = APIRouter(include_in_schema=False)

ROOT = Path(__file__).resolve().parent.parent / "dashboard"
SUFFIXES = {".html", ".js", ".css", ".svg", ".png", ".ico", ".json"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


def _asset(body: bytes, name: str) -> Asset:
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type in ("application/javascript", "application/json"):
        media_type += "; charset=utf-8"
    return Asset(body, gzip.compress(body, 6, mtime=0), media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


@cache
def _file(relative: str) -> Asset:
    """A file of the dashboard folder, read once (the files are small and never change at run time)."""
    path = (ROOT / relative).resolve()
    if not path.is_relative_to(ROOT) or path.suffix not in SUFFIXES or not path.is_file():
        raise NotFound(f"no dashboard file {relative}")
    return _asset(path.read_bytes(), path.name)


def _send(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache_control, "Vary": "Accept-Encoding", **SECURITY_HEADERS}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(asset.gzipped, media_type=asset.media_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
def index(request: Request) -> Response:
    """The single page; the route after ``#`` (``#/jobs/ID``, ``#/trials/ID``) picks the view."""
    return _send(request, _file("index.html"), "no-cache")


@router.get("/dashboard/{path:path}")
def dashboard_file(path: str, request: Request) -> Response:
    # "no-cache" revalidates with the ETag: a server upgrade is seen at once, unchanged files cost a 304.
    return _send(request, _file(path), "no-cache")

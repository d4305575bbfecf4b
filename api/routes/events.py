"""Server-sent events: live trial and job changes, for the dashboard and any HTTP client.

``GET /jobs/{id}/events`` streams one job: ``job`` (the job, with its best trial, whenever its
status, counts or best trial change), ``trial`` (a trials-table row whenever a trial is created
or changes state or metrics), ``epoch`` (a per-epoch report of a running trial) and, once the job
has finished and every change was sent, ``end``; then the stream closes. ``GET /events`` streams
``job`` events for all the caller's jobs (the jobs list) and never ends by itself.

The database is the source of truth (a runner on another machine writes the same tables), so a
stream polls it: once a second, one indexed query on ``trials(job_id, updated_at)``, one on new
epoch rows, and the job row. Each event's ``id`` is a resume point: a reconnecting EventSource
sends it back as ``Last-Event-ID`` and misses nothing. ``GET /events`` reads the newest 100 jobs
once, then every two seconds only the jobs changed since its last poll (``Store.changed_jobs``).
``job`` events carry no spec (``GET /jobs/{id}`` has it). An owner may hold
``NAS_LIMIT_EVENT_STREAMS`` streams open per API process; one more answers 429 with ``Retry-After``.

Authentication. A browser's ``EventSource`` cannot send an ``Authorization`` header, and an API
key must never appear in a URL (URLs end up in proxy logs and browser history). So a client first
asks ``POST /events/token`` (with its key, as usual; ``?job_id=`` scopes the token to one job) for
a short-lived token, and opens the stream with ``?token=``. The token names the key's id, its
owner, the job if one was named, and an expiry, and is signed with the server secret
(:mod:`nas.signing`): nothing in the database is enough to forge one, and rotating the secret
(``nas keys rotate-secret``) voids every token. A token is good for opening streams for five
minutes; each use also checks that its key still stands, so revoking the key voids its tokens at
once, and an open stream re-checks its key every few seconds and ends with a ``denied`` event once
the key is revoked. Clients that can send headers (curl, the SDK) may use ``Authorization:
Bearer`` instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, StoreDep, authentication_refused, get_principal
from api.queries import DashboardQueries
from api.responses import errors
from api.routes.dashboard_api import JobOverview, get_queries, overviews
from nas.signing import MAX_TOKEN_CHARS, TOKEN_PATTERN, ServerSecret
from nas.store import Principal, Store

router = APIRouter(tags=["events"])

TOKEN_TTL_S = 300
POLL_S = 1.0
JOBS_POLL_S = 2.0
KEEPALIVE_S = 15.0
RECHECK_KEY_S = 2.0  # an open stream of a revoked key ends within this (plus one poll)
TOKEN_PURPOSE = "events"
# Changes are read again this far back: a transaction may commit a little after the time it stamped.
OVERLAP = timedelta(seconds=3)
MAX_CHANGES = 1000  # more changed trials than this in one poll: the client is told to reload

_bearer = HTTPBearer(auto_error=False, description="an API key from `nas keys create`")


class EventToken(BaseModel):
    token: str
    expires_at: datetime
    expires_in_s: int


def _secret(request: Request) -> ServerSecret:
    return request.app.state.secret


@router.post("/events/token", response_model=EventToken, responses=errors(404))
def create_event_token(
    request: Request,
    principal: PrincipalDep,
    job_id: Annotated[
        str | None, Query(max_length=64, description="scope the token to this job's stream (default: any of yours)")
    ] = None,
) -> EventToken:
    """A token that opens event streams (``?token=``) for five minutes, as the key that asked for it."""
    expires = int(time.time()) + TOKEN_TTL_S
    claims: dict[str, Any] = {"k": principal.key_id, "o": principal.owner, "exp": expires}
    if job_id is not None:
        get_queries(request).job_spec(job_id, principal)  # 404 for a job the caller cannot see
        claims["j"] = job_id
    return EventToken(
        token=_secret(request).sign(TOKEN_PURPOSE, claims),
        expires_at=datetime.fromtimestamp(expires, timezone.utc),
        expires_in_s=TOKEN_TTL_S,
    )


@dataclass
class StreamAuth:
    """Who opened a stream, and how to ask later whether that key still stands."""

    principal: Principal
    still_valid: Callable[[], bool]


def _check_token(store: Store, secret: ServerSecret, token: str, job_id: str | None) -> Principal | None:
    """The principal a token speaks for: signed by this server, unexpired, for this job if scoped, key not revoked."""
    claims = secret.verify(TOKEN_PURPOSE, token)
    if claims is None or not isinstance(claims.get("k"), int) or claims.get("j", job_id) != job_id:
        return None
    key = store.api_key(claims["k"])
    if key is None or key.revoked or key.owner != claims.get("o"):
        return None
    return Principal(owner=key.owner, is_admin=key.is_admin, key_id=key.id)


def _key_still_valid(store: Store, key_id: int | None) -> Callable[[], bool]:
    def still_valid() -> bool:
        key = store.api_key(key_id) if key_id is not None else None
        return key is not None and not key.revoked

    return still_valid


async def stream_auth(
    request: Request,
    store: StoreDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[
        str | None,
        Query(max_length=MAX_TOKEN_CHARS, pattern=TOKEN_PATTERN, description="from POST /events/token"),
    ] = None,
) -> StreamAuth:
    """A Bearer key, or else a token from ``POST /events/token``."""
    if credentials is not None or token is None:
        principal = await get_principal(request, store, credentials)
        return StreamAuth(principal, _key_still_valid(store, principal.key_id))
    job_id = request.path_params.get("job_id")
    principal = await run_in_threadpool(_check_token, store, _secret(request), token, job_id)
    if principal is None:
        raise authentication_refused(
            request, "invalid or expired event-stream token; get a new one from POST /api/v1/events/token"
        )
    return StreamAuth(principal, _key_still_valid(store, principal.key_id))


StreamAuthDep = Annotated[StreamAuth, Depends(stream_auth)]


# -- the wire format ---------------------------------------------------------------------------


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    """One event: ``data`` as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def _resume_point(cursor: datetime, epoch_id: int) -> str:
    return f"{int(cursor.timestamp() * 1000)}-{epoch_id}"


def _parse_resume_point(text: str | None) -> tuple[datetime, int] | None:
    if not text:
        return None
    try:
        millis, epoch_id = text.split("-")
        return datetime.fromtimestamp(int(millis) / 1000, timezone.utc), int(epoch_id)
    except (ValueError, OverflowError, OSError):
        return None


def _headers() -> dict[str, str]:
    # no-transform and X-Accel-Buffering keep proxies from buffering the stream
    return {"Cache-Control": "no-store, no-transform", "X-Accel-Buffering": "no"}


# -- one job -----------------------------------------------------------------------------------


@dataclass
class JobFeed:
    """What one job stream has sent so far, and what to send next."""

    queries: DashboardQueries
    store: Store
    job_id: str
    cursor: datetime
    epoch_id: int
    first: bool = True
    job: dict[str, Any] | None = None
    sent: dict[str, datetime | None] | None = None

    def poll(self) -> tuple[JobOverview, list[dict[str, Any]], list[dict[str, Any]], bool]:
        """(job, changed trials, new epochs, too many changes) since the last poll; runs in a thread."""
        job = self.store.get_job(self.job_id)
        changed = self.queries.changed_trials(self.job_id, self.cursor - OVERLAP, limit=MAX_CHANGES)
        if len(changed) >= MAX_CHANGES:
            self.cursor = datetime.now(timezone.utc)
            self.sent = {}
            return overviews(self.queries, [job])[0], [], [], True
        sent = self.sent if self.sent is not None else {}
        stamps = {t["id"]: datetime.fromisoformat(t["updated_at"]) for t in changed}
        fresh = [t for t in changed if sent.get(t["id"]) != stamps[t["id"]]]
        since = self.cursor - OVERLAP if self.first else None
        epochs = self.queries.new_epochs([t["id"] for t in changed], self.epoch_id, since=since)
        if changed:
            self.cursor = max(self.cursor, *stamps.values())
        horizon = self.cursor - OVERLAP
        self.sent = {trial_id: stamp for trial_id, stamp in stamps.items() if stamp >= horizon}
        if epochs:
            self.epoch_id = max(self.epoch_id, max(e.id for e in epochs))
        self.first = False
        return overviews(self.queries, [job])[0], fresh, [e.model_dump(mode="json") for e in epochs], False


async def _job_events(feed: JobFeed, auth: StreamAuth) -> AsyncIterator[str]:
    yield "retry: 3000\n\n"
    last_write = last_check = time.monotonic()
    while True:
        job, trials, epochs, reset = await run_in_threadpool(feed.poll)
        point = _resume_point(feed.cursor, feed.epoch_id)
        chunks = []
        if reset:
            chunks.append(sse("reset", {"reason": "more changes than one event batch carries; reload"}, point))
        for trial in trials:
            chunks.append(sse("trial", trial, point))
        for epoch in epochs:
            chunks.append(sse("epoch", epoch, point))
        job_json = job.model_dump(mode="json", exclude={"spec"})  # streams leave specs out
        if job_json != feed.job:
            feed.job = job_json
            chunks.append(sse("job", job_json, point))
        finished = job.status.finished and not trials and not epochs and not reset
        if finished:
            chunks.append(sse("end", {"status": job.status.value}, point))
        now = time.monotonic()
        if not chunks and now - last_write >= KEEPALIVE_S:
            chunks.append(": keep-alive\n\n")
        if chunks:
            last_write = now
            yield "".join(chunks)
        if finished:
            return
        if now - last_check >= RECHECK_KEY_S:
            last_check = now
            if not await run_in_threadpool(auth.still_valid):
                yield sse("denied", {"status": 401, "detail": "the API key was revoked"})
                return
        await asyncio.sleep(POLL_S)


# One server-sent event, as OpenAPI before 3.2 documents a stream: its schema describes each event.
_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "description": "trial, epoch, job, reset or denied"},
        "data": {"type": "string", "description": "one line of JSON"},
        "id": {"type": "string", "description": "the resume point to send back as Last-Event-ID"},
    },
}


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": _EVENT}}, "description": "an event stream"},
        **errors(404),
    },
)
async def job_events(
    request: Request,
    job_id: str,
    store: StoreDep,
    auth: StreamAuthDep,
    since: Annotated[
        float | None, Query(ge=0, le=1e11, description="send trials changed since this Unix time (s); default: now")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Server-sent events of one job's trial and job changes (see the module's notes)."""
    queries = get_queries(request)
    job_id = await run_in_threadpool(queries.job_id, job_id, auth.principal)  # a prefix's full id; 404 for another owner's job
    resumed = _parse_resume_point(last_event_id)
    if resumed is not None:
        cursor, epoch_id = resumed
    else:
        cursor = datetime.fromtimestamp(since, timezone.utc) if since is not None else datetime.now(timezone.utc)
        epoch_id = await run_in_threadpool(queries.last_epoch_id)
    feed = JobFeed(queries, store, job_id, cursor, epoch_id, first=resumed is None)
    body = _CountedStream(_job_events(feed, auth), _open_stream(request, auth.principal.owner))
    return StreamingResponse(body, media_type="text/event-stream", headers=_headers())


# -- all the caller's jobs ---------------------------------------------------------------------


async def _jobs_events(request: Request, store: Store, auth: StreamAuth) -> AsyncIterator[str]:
    queries = get_queries(request)
    yield "retry: 3000\n\n"
    seen: dict[str, dict[str, Any]] = {}  # what was sent of the jobs the last poll read
    since: datetime | None = None
    last_write = last_check = time.monotonic()

    def poll() -> list[JobOverview]:
        """The newest 100 jobs on connecting; then only those changed since the last poll."""
        nonlocal since
        now = datetime.now(timezone.utc)
        if since is None:
            jobs, _ = store.list_jobs(auth.principal, None, 100, None)
        else:
            jobs = store.changed_jobs(auth.principal, since - OVERLAP, MAX_CHANGES)
        since = now
        return overviews(queries, jobs)

    while True:
        chunks = []
        polled = {}
        for job in await run_in_threadpool(poll):
            data = job.model_dump(mode="json", exclude={"spec"})  # streams leave specs out
            polled[job.id] = data
            if seen.get(job.id) != data:
                chunks.append(sse("job", data))
        seen = polled
        now = time.monotonic()
        if not chunks and now - last_write >= KEEPALIVE_S:
            chunks.append(": keep-alive\n\n")
        if chunks:
            last_write = now
            yield "".join(chunks)
        if now - last_check >= RECHECK_KEY_S:
            last_check = now
            if not await run_in_threadpool(auth.still_valid):
                yield sse("denied", {"status": 401, "detail": "the API key was revoked"})
                return
        await asyncio.sleep(JOBS_POLL_S)


# Left out of the OpenAPI document: it never ends by itself, which a schema fuzzer cannot stop.
@router.get("/events", response_class=StreamingResponse, include_in_schema=False)
async def jobs_events(request: Request, store: StoreDep, auth: StreamAuthDep) -> StreamingResponse:
    """``job`` events for every job the caller can see: the newest 100 on connecting, then changes."""
    body = _CountedStream(_jobs_events(request, store, auth), _open_stream(request, auth.principal.owner))
    return StreamingResponse(body, media_type="text/event-stream", headers=_headers())


# -- open streams per owner --------------------------------------------------------------------


def _open_stream(request: Request, owner: str) -> Callable[[], None]:
    """Count a stream of ``owner`` in (429 with ``Retry-After`` past ``limit_event_streams`` in this
    process); returns what counts it out."""
    limit = request.app.state.settings.limit_event_streams
    counts: dict[str, int] | None = getattr(request.app.state, "event_streams", None)
    if counts is None:
        counts = request.app.state.event_streams = {}
    if counts.get(owner, 0) >= limit:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{owner} already has {limit} event streams open (limit NAS_LIMIT_EVENT_STREAMS={limit}); close one",
            headers={"Retry-After": str(int(KEEPALIVE_S))},
        )
    counts[owner] = counts.get(owner, 0) + 1

    def release() -> None:
        counts[owner] -= 1
        if not counts[owner]:
            del counts[owner]

    return release


class _CountedStream:
    """A stream body that counts itself out once: when it ends, fails, is cancelled by a client
    that went away, or is dropped without ever being read."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None]) -> None:
        self._body = body
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> _CountedStream:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._body.__anext__()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:
        self.close()


__all__ = ["router", "sse"]

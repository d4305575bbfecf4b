"""Request dependencies: the store, the settings and the caller's identity.

They are ``async def`` on purpose: FastAPI runs every plain ``def`` dependency in the thread pool,
and those hand-offs, not the queries, dominated a request's cost under load (BENCHMARKS.md, Load).
The one query here, the key lookup by its hash, is an indexed point read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.ratelimit import FailureLimiter
from api.request_context import note_owner
from nas.settings import Settings
from nas.store import Principal, Store

_bearer = HTTPBearer(auto_error=False, description="an API key from `nas keys create`")


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def get_principal(
    request: Request,
    store: Annotated[Store, Depends(get_store)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The key's owner. A wrong key (not a missing one: no guess was made) counts against the client's address."""
    limiter: FailureLimiter = request.app.state.auth_limiter
    client = request.client.host if request.client else "unknown"
    retry_after = limiter.retry_after(client)
    if retry_after is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, f"too many failed authentications; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    if credentials is None:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    principal = store.authenticate(credentials.credentials)
    if principal is None:
        limiter.record_failure(client)
        raise _unauthorized("invalid or revoked API key")
    note_owner(principal.owner)
    return principal


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]

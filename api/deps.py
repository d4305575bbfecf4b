"""Request dependencies: the store, the settings, the caller's identity and the datasets it may use.

They are ``async def`` on purpose: FastAPI runs every plain ``def`` dependency in the thread pool,
and those hand-offs, not the queries, dominated a request's cost under load (BENCHMARKS.md, Load).
The one query here, the key lookup by its hash, is an indexed point read; a key's last use is
written at most once a minute per process, in the thread pool.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.ratelimit import FailureLimiter
from api.request_context import note_owner
from nas.data.stored import scope_catalog
from nas.models.stored import scope_model_catalog
from nas.settings import Settings
from nas.store import Principal, Store
from nas.store.dataset_catalog import StoreDatasetCatalog
from nas.store.model_catalog import StoreModelCatalog
from nas.store.target_catalog import StoreTargetCatalog
from nas.timing.agent_targets import scope_target_catalog

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="an API key from `nas keys create`")
LAST_USED_EVERY_S = 60.0  # how often one process stamps a key's last use


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def authentication_refused(request: Request, detail: str) -> HTTPException:
    """The answer to a wrong key or token: 401, or 429 once its address has failed too often.

    Only wrong credentials are counted and refused: a valid key is checked first and always let
    through, so wrong keys sent from a shared address (a proxy, a NAT) never lock out a right one.
    """
    limiter: FailureLimiter = request.app.state.auth_limiter
    client = request.client.host if request.client else "unknown"
    retry_after = limiter.retry_after(client)
    if retry_after is not None:
        return HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, f"too many failed authentications; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    limiter.record_failure(client)
    return _unauthorized(detail)


async def _note_use(request: Request, store: Store, principal: Principal) -> None:
    """Stamp the key's last use, at most once a minute per key and process: one small write, off the event loop."""
    if principal.key_id is None:
        return
    noted: dict[int, float] = request.app.state.key_use_noted
    now = time.monotonic()
    if now - noted.get(principal.key_id, -math.inf) < LAST_USED_EVERY_S:
        return
    noted[principal.key_id] = now
    try:
        await run_in_threadpool(store.note_api_key_use, principal.key_id)
    except Exception:  # a busy database must not fail the request the key was good for
        log.warning("could not record the last use of API key %s", principal.key_id, exc_info=True)


def _key_principal(request: Request, store: Store, credentials: HTTPAuthorizationCredentials | None,
                   missing: str, agent: bool) -> Principal:  # fmt: skip
    """The key's principal, if it is of the kind the route takes (an agent key, or a user key); a
    wrong key (not a missing one: no guess was made) counts against the client's address."""
    if credentials is None:
        raise _unauthorized(missing)
    principal = store.authenticate(credentials.credentials)
    if principal is None:
        raise authentication_refused(request, "invalid or revoked API key")
    if principal.is_agent and not agent:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "an agent key only measures: it may call the /agents routes, nothing else; "
            "use a user key (`nas keys create NAME`) for jobs, models, datasets and trials",
        )
    if agent and not principal.is_agent:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the /agents routes take an agent key: mint one with `nas keys create NAME --agent`"
        )
    note_owner(principal.owner)
    return principal


async def get_principal(
    request: Request,
    store: Annotated[Store, Depends(get_store)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The owner of a user key, with the stored resources it may name installed for the request."""
    principal = _key_principal(
        request, store, credentials, agent=False,
        missing="missing API key: the CLI and SDK read it from NAS_API_KEY (mint one with `nas keys create NAME`); "
        "other clients send 'Authorization: Bearer <key>'",
    )  # fmt: skip
    # Before FastAPI validates the body: a job spec naming a stored dataset or model finds only the caller's.
    scope_catalog(StoreDatasetCatalog(store, None if principal.is_admin else principal.owner))
    scope_model_catalog(StoreModelCatalog(store, None if principal.is_admin else principal.owner))
    scope_target_catalog(StoreTargetCatalog(store, principal.owner))  # a job's target may be one of the caller's
    await _note_use(request, store, principal)
    return principal


async def get_agent_principal(
    request: Request,
    store: Annotated[Store, Depends(get_store)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The owner of an agent key; a user key gets 403 here, as an agent key does on every other route."""
    principal = _key_principal(request, store, credentials, "missing agent key: mint one with `nas keys create NAME --agent`",
                               agent=True)  # fmt: skip
    await _note_use(request, store, principal)
    return principal


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters a dependant takes, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


async def known_query_only(request: Request) -> None:
    """Refuse a query parameter the route does not take (422 naming it).

    Ignoring it would turn a misspelt filter (``?stat=failed``) into a silent, unfiltered answer.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)  # a walk over a few dependants
    unknown = [name for name in dict.fromkeys(request.query_params.keys()) if name not in known]
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        errors: list[dict[str, Any]] = [
            {"type": "extra_forbidden", "loc": ["query", name], "input": request.query_params[name],
             "msg": f"unknown query parameter {name!r}; this route takes: {takes}", "ctx": {"valid": sorted(known)}}
            for name in unknown
        ]
        raise RequestValidationError(errors)


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AgentPrincipalDep = Annotated[Principal, Depends(get_agent_principal)]

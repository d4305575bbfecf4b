"""API keys over the API: list them and revoke them (``nas keys list|revoke`` do the same on the database).

An admin key sees and revokes every key; any other key sees and revokes only its owner's keys
(another owner's key id answers 404). Nothing here ever shows a key or its hash: only ``nas keys
create`` prints a key, once.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, StoreDep
from api.responses import errors
from nas.client.models import Identity
from nas.errors import NotFound
from nas.store import ApiKey

router = APIRouter(prefix="/keys", tags=["keys"])
whoami_router = APIRouter(tags=["keys"])


class KeyInfo(BaseModel):
    """An API key as it may be shown: who owns it, its rights and its dates."""

    id: int
    owner: str
    is_admin: bool
    kind: str = Field(description="user, or agent (measures on its owner's targets, reads nothing)")
    created_at: datetime
    last_used_at: datetime | None  # to the minute
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyInfo:
        return cls(
            id=key.id, owner=key.owner, is_admin=key.is_admin, kind=key.kind, created_at=key.created_at,
            last_used_at=key.last_used_at, revoked_at=key.revoked_at,
        )


class KeyList(BaseModel):
    items: list[KeyInfo]


@router.get("", response_model=KeyList, responses=errors())
async def list_keys(principal: PrincipalDep, store: StoreDep) -> KeyList:
    """Every key (admins) or the caller's owner's keys, oldest first."""
    owner = None if principal.is_admin else principal.owner
    keys = await run_in_threadpool(store.list_api_keys, owner)
    return KeyList(items=[KeyInfo.of(key) for key in keys])


@router.post("/{key_id}/revoke", response_model=KeyInfo, responses=errors(404))
async def revoke_key(
    principal: PrincipalDep, store: StoreDep, key_id: int = Path(ge=1, le=2**62)
) -> KeyInfo:
    """Revoke a key: from now on every request with it answers 401 and its open streams end within seconds.

    Revoking a key that is already revoked changes nothing and answers the key as it is.
    """
    owner = None if principal.is_admin else principal.owner
    try:
        (key,) = await run_in_threadpool(store.revoke_api_keys, key_id, owner)
    except NotFound:
        raise NotFound(f"API key {key_id} not found") from None
    return KeyInfo.of(key)


@whoami_router.get("/whoami", response_model=Identity, responses=errors())
async def whoami(principal: PrincipalDep) -> Identity:
    """The owner and rights of the key sent: what the dashboard shows as signed in."""
    return Identity(owner=principal.owner, is_admin=principal.is_admin, key_id=principal.key_id)

"""Opaque cursors for keyset pagination, signed with the server secret.

A cursor carries the last row's position and the list it belongs to (``scope``), signed for the
purpose ``"cursor"`` (:mod:`nas.signing`), so a made-up, altered or borrowed one answers 422 and
only positions the server handed out ever reach a query. Rotating the secret voids open cursors:
a client starts its listing again.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query, Request

from nas.signing import MAX_TOKEN_CHARS, TOKEN_PATTERN

PURPOSE = "cursor"
_LARGEST = 2**63 - 1  # a position is a 64-bit sequence or trial number

# A page's size, and the opaque cursor of a previous page, as list routes take them.
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[
    str | None,
    Query(max_length=MAX_TOKEN_CHARS, pattern=TOKEN_PATTERN, description="the next_cursor of the previous page"),
]


def encode_cursor(request: Request, position: int | None, scope: str) -> str | None:
    if position is None:
        return None
    return request.app.state.secret.sign(PURPOSE, {"p": position, "s": scope})


def decode_cursor(request: Request, cursor: str | None, scope: str) -> int | None:
    if cursor is None:
        return None
    claims = request.app.state.secret.verify(PURPOSE, cursor)
    position = claims.get("p") if claims is not None and claims.get("s") == scope else None
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position <= _LARGEST:
        raise HTTPException(422, "invalid cursor: pass the next_cursor of a previous page of the same list")
    return position

"""Opaque cursors for keyset pagination."""

from __future__ import annotations

import base64

from fastapi import HTTPException


def encode_cursor(position: int | None) -> str | None:
    if position is None:
        return None
    return base64.urlsafe_b64encode(str(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return int(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(422, f"invalid cursor {cursor!r}") from None

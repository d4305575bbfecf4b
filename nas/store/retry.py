"""Retrying store operations when the database connection is lost (a restart, a failover, a
killed backend), with exponential backoff.

A failure before ``COMMIT`` was sent rolled the transaction back on the server, so the whole
operation may run again. A failure *during* ``COMMIT`` is ambiguous: the write may or may not
have landed. Only operations marked idempotent (running them twice leaves the same state and
answer) are retried then; the others raise, as they would without a retry.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)

ATTEMPTS = 6  # delays 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s: about 6 s in all before giving up
FIRST_DELAY_S = 0.2

F = TypeVar("F", bound=Callable[..., Any])


class CommitUncertain(Exception):
    """The connection broke while committing; ``__cause__`` is the database error."""


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection, or a transaction the server rolled back (lock, deadlock).

    SQLite's "database is locked" is not retried: its 30 s busy timeout already waited.
    """
    if not isinstance(exc, DBAPIError):
        return False
    server_side = isinstance(exc, OperationalError) and not isinstance(exc.orig, sqlite3.Error)
    return exc.connection_invalidated or server_side


def retrying(idempotent: bool) -> Callable[[F], F]:
    """Decorate a store method so transient database errors are retried with backoff."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            delay = FIRST_DELAY_S
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    return fn(*args, **kwargs)
                except CommitUncertain as exc:
                    if not idempotent or attempt == ATTEMPTS:
                        raise exc.__cause__ from None  # type: ignore[misc]
                    error: BaseException = exc.__cause__  # type: ignore[assignment]
                except DBAPIError as exc:
                    if not is_transient(exc) or attempt == ATTEMPTS:
                        raise
                    error = exc
                log.warning("%s: database error (%s); retry %d in %.1f s",
                            fn.__name__, type(error).__name__, attempt, delay)
                time.sleep(delay)
                delay *= 2
            raise AssertionError("unreachable")

        return wrapper  # type: ignore[return-value]

    return decorate

"""One object a process installs and a context may override: where stored resources are found.

The API installs a catalog of stored datasets or models per request (scoped to the caller's own,
so another owner's is unknown exactly as a never-stored id is); the runner and each worker
install theirs once per process. A ``ContextVar`` carries the request's, so threads a request
hands work to (they copy its context) see it too, and concurrent requests never see each other's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

T = TypeVar("T")

STORE_ID_PATTERN = r"^[0-9a-f]{32}$"  # the store's ids (uuid4 hex); never a user-given name or path
STORE_ID_PREFIX_PATTERN = r"^[0-9a-f]{4,32}$"
"""A store id or a unique prefix of it (at least 4 hex digits), as a job spec may name a stored resource."""


class Installed(Generic[T]):
    """The process's ``T``, unless the current context scoped its own."""

    def __init__(self, name: str, missing: Callable[[], LookupError]) -> None:
        self._process: T | None = None
        self._scoped: ContextVar[T | None] = ContextVar(name, default=None)
        self._missing = missing

    def use(self, value: T | None) -> None:
        """Make ``value`` this process's (a runner, a worker); ``None`` removes it."""
        self._process = value

    def scope(self, value: T) -> None:
        """Make ``value`` the current context's only: one API request and the threads it hands work to."""
        self._scoped.set(value)

    @contextmanager
    def scoped(self, value: T) -> Iterator[None]:
        """:meth:`scope` for the ``with`` block only."""
        token = self._scoped.set(value)
        try:
            yield
        finally:
            self._scoped.reset(token)

    def current(self) -> T:
        """The context's, else the process's; raises the ``missing`` error if there is none."""
        value = self._scoped.get() or self._process
        if value is None:
            raise self._missing()
        return value

"""Agent targets as a job spec sees them: which names exist for the submitter, and what they offer.

A job's ``target`` is one of the server's own (``cpu``, ``cuda``) or one of its owner's agent
targets (devices whose ``nas agent`` processes time models). Only the API, which knows the
submitter, can tell the latter apart from a typo: it installs a :class:`TargetCatalog` per request
(:func:`scope_target_catalog`). Processes without one (the runner, a worker) read specs the API
already checked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from nas.installed import Installed

TARGET_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
"""An agent target's name: a plain identifier, so a job's ``target`` never carries a path or markup."""


class UnknownTarget(LookupError):
    """No target of that name for this owner."""


class TargetCatalog(ABC):
    """The submitter's agent targets."""

    @abstractmethod
    def runtimes(self, name: str) -> list[str]:
        """The runtimes the target's registered agents offer; raises :class:`UnknownTarget` naming the valid ones."""


_catalogs: Installed[TargetCatalog] = Installed("nas_target_catalog", lambda: UnknownTarget("no target catalog here"))
scope_target_catalog = _catalogs.scope
use_target_catalog = _catalogs.use


def current_target_catalog() -> TargetCatalog | None:
    """The request's (or process's) catalog, or ``None`` where specs were checked before."""
    try:
        return _catalogs.current()
    except UnknownTarget:
        return None

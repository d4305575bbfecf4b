"""Errors shared by the store, the API and the runners."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'epochs'?"`` for the valid name closest to a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class NasError(Exception):
    """Base class of the project's own errors."""


class NotFound(NasError):
    """A job, trial or artifact does not exist, or belongs to another owner."""


class AmbiguousId(NasError):
    """An id prefix that matches more than one job, trial, dataset or model the viewer may see (HTTP 422)."""

    def __init__(self, message: str, prefix: str) -> None:
        super().__init__(message)
        self.prefix = prefix


class IllegalTransition(NasError):
    """A state change that the job or trial state machine forbids (HTTP 409)."""


class UnknownName(NasError, ValueError):
    """A name that is not registered; the message lists the valid ones."""


class BudgetNotRaised(NasError, ValueError):
    """A budget change that would lower a limit (HTTP 422); ``field`` names the budget field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field



class TooManyJobs(NasError):
    """The owner is at a quota: active jobs, jobs created this hour or stored spec bytes (HTTP 429).

    ``retry_after`` is the number of seconds after which the quota may allow the job.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(NasError):
    """Storing this would pass the owner's storage quota (HTTP 413)."""

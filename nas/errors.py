"""Errors shared by the store, the API and the runners."""


class NasError(Exception):
    """Base class of the project's own errors."""


class NotFound(NasError):
    """A job, trial or artifact does not exist, or belongs to another owner."""


class IllegalTransition(NasError):
    """A state change that the job or trial state machine forbids (HTTP 409)."""


class UnknownName(NasError, ValueError):
    """A name that is not registered; the message lists the valid ones."""



class TooManyJobs(NasError):
    """The owner already has as many queued and running jobs as the server allows (HTTP 429)."""

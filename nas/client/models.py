"""Typed answers of the API that are not already in :mod:`nas.specs`."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from nas.specs import DatasetRecord, JobSummary, ModelRecord, Page, Trial

Dataset = DatasetRecord  # what ``GET /datasets/{id}`` answers; its JSON Schema title is Dataset
Model = ModelRecord  # what ``GET /models/{id}`` answers; its JSON Schema title is Model


class Identity(BaseModel):
    """Who an API key signs in as (``GET /whoami``)."""

    owner: str
    is_admin: bool = Field(description="an admin key sees and manages every owner's jobs and keys")
    key_id: int | None = Field(description="the key's id in `nas keys list`")


class JobPage(Page):
    """One page of ``GET /jobs``; pass ``next_cursor`` back for the next one (``None``: last page).

    Listed jobs carry an ``outline`` of their spec; ``Client.job(id)`` returns the whole spec."""

    items: list[JobSummary]


class TrialPage(Page):
    """One page of ``GET /jobs/{id}/trials``, in trial-number order."""

    items: list[Trial]


class DatasetPage(Page):
    """One page of ``GET /datasets``, newest first."""

    items: list[Dataset]


class ModelPage(Page):
    """One page of ``GET /models``, newest first."""

    items: list[Model]


class Event(BaseModel):
    """One server-sent event of a job's stream (``GET /jobs/{id}/events``).

    ``event`` is the event's type (``message`` when the server names none); ``data`` is the
    decoded JSON payload, or the raw text when it is not JSON; ``id`` is what the stream resumes
    from after a reconnection.
    """

    event: str = "message"
    data: Any = None
    id: str | None = None
    retry_ms: int | None = Field(None, description="the reconnection delay the server asked for")

    @classmethod
    def from_sse(cls, event: str, data: str, id: str | None, retry: int | None) -> Event:
        try:
            payload: Any = json.loads(data) if data else None
        except ValueError:
            payload = data
        return cls(event=event or "message", data=payload, id=id or None, retry_ms=retry)

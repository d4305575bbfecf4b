"""Models users store with the service (uploaded ONNX files): where a process finds them.

A job names one as ``search_space: {name: model_sparsity, params: {model_id: ...}}``. Planning
the job (validating it at submission, the runner's feasibility checks) needs only the model's
record (input shape, prunable layers), which the store holds; a trial needs its ONNX file, which
a worker reads from its own node's cache, filled from Ray's object store, never from the API
machine's disk. Each process therefore says where stored models are found by installing a
:class:`ModelCatalog`: the API for each request (scoped to the caller's models, so another
owner's model is unknown, exactly as an unknown id is), the runner and the workers once per
process. The mechanism is that of stored datasets (:mod:`nas.data.stored`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nas.specs import ModelRecord

ID_PATTERN = r"^[0-9a-f]{32}$"  # the store's ids (uuid4 hex); never a user-given name or path


class UnknownModel(LookupError):
    """No stored model of that id is known here (never stored, deleted, or another owner's)."""


class ModelCatalog(ABC):
    """Where this process finds stored models."""

    @abstractmethod
    def get(self, model_id: str) -> ModelRecord:
        """The model's record; raises :class:`UnknownModel`."""

    def onnx_path(self, model_id: str) -> Path:
        """The model's ONNX file on this machine; raises :class:`UnknownModel`.

        Only a worker's catalog has the files: planning processes know records alone.
        """
        raise UnknownModel(f"model {model_id}'s file is not on this machine")


_process_catalog: ModelCatalog | None = None
_scoped_catalog: ContextVar[ModelCatalog | None] = ContextVar("nas_model_catalog", default=None)


def use_model_catalog(catalog: ModelCatalog | None) -> None:
    """Make ``catalog`` this process's model catalog (a runner, a worker); ``None`` removes it."""
    global _process_catalog
    _process_catalog = catalog


def scope_model_catalog(catalog: ModelCatalog) -> None:
    """Make ``catalog`` the model catalog of the current context only: one API request and the
    threads it hands work to (they copy its context)."""
    _scoped_catalog.set(catalog)


@contextmanager
def scoped_model_catalog(catalog: ModelCatalog) -> Iterator[None]:
    """:func:`scope_model_catalog` for the ``with`` block only."""
    token = _scoped_catalog.set(catalog)
    try:
        yield
    finally:
        _scoped_catalog.reset(token)


def current_model_catalog() -> ModelCatalog:
    """The context's model catalog, else the process's; raises :class:`UnknownModel` if there is none."""
    catalog = _scoped_catalog.get() or _process_catalog
    if catalog is None:
        raise UnknownModel("this process knows no stored models (no model catalog installed)")
    return catalog

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
from pathlib import Path
from typing import TYPE_CHECKING

from nas.installed import STORE_ID_PATTERN as ID_PATTERN
from nas.installed import Installed

if TYPE_CHECKING:
    from nas.specs import ModelRecord

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


_catalogs: Installed[ModelCatalog] = Installed(
    "nas_model_catalog", lambda: UnknownModel("this process knows no stored models (no model catalog installed)")
)
use_model_catalog = _catalogs.use
scope_model_catalog = _catalogs.scope
scoped_model_catalog = _catalogs.scoped
current_model_catalog = _catalogs.current

"""Stored models on a worker node: one ONNX file per model in the node's cache, one converted network per process.

A trial never reads a file only the API machine has. A stored model's ONNX bytes come through
Ray's object store (:mod:`workers.models`); the node writes them once, checked against the
sha256 the store recorded, as ``Settings.model_cache_dir/<id>.onnx``, and every trial on it reads
that file through :class:`NodeModelCatalog`. Ids are never reused and a stored model never
changes, so a file once written and checked stays right (the mechanism of stored datasets,
:mod:`nas.data.node_cache`).

Converting ONNX to torch checks the whole graph, so each process converts a model once
(:func:`pretrained_model`) and hands every caller a copy of its own to train.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.data.node_cache import cache_delivered
from nas.models.stored import ID_PATTERN, ModelCatalog, UnknownModel, current_model_catalog

if TYPE_CHECKING:
    from torch import nn

    from nas.specs import ModelRecord


class NodeModelCatalog(ModelCatalog):
    """The models delivered to this node: their records as the job's delivery carried them, their ONNX files
    in ``cache_dir``."""

    def __init__(self, cache_dir: Path, records: dict[str, ModelRecord]) -> None:
        self.cache_dir = cache_dir
        self.records = records

    def get(self, model_id: str) -> ModelRecord:
        try:
            return self.records[model_id]
        except KeyError:
            raise UnknownModel(f"model {model_id} was not delivered to this node") from None

    def onnx_path(self, model_id: str) -> Path:
        path = cache_path(self.cache_dir, model_id)
        if model_id not in self.records or not path.is_file():
            raise UnknownModel(f"model {model_id} is not in this node's cache ({self.cache_dir})")
        return path


def cache_path(cache_dir: Path, model_id: str) -> Path:
    """Where the node keeps a model; built from a checked id only, never from user text."""
    if not re.fullmatch(ID_PATTERN, model_id):
        raise ValueError(f"not a model id: {model_id!r}")
    return cache_dir / f"{model_id}.onnx"


def cache_model(cache_dir: Path, model_id: str, sha256: str, fetch: Callable[[], Any]) -> Path:
    """The cached ONNX file of a stored model whose bytes hash to ``sha256`` (:func:`cache_delivered`)."""
    return cache_delivered(cache_path(cache_dir, model_id), f"model {model_id}", sha256, fetch)


def pretrained_model(model_id: str, sha256: str) -> nn.Module:
    """A fresh copy of the stored model converted to torch, with its trained weights, in eval mode.

    The process's model catalog says where its ONNX file is (the store's folder on the server,
    the node cache on a worker); ``sha256`` keys the conversion kept for the process.
    """
    return copy.deepcopy(_converted(str(current_model_catalog().onnx_path(model_id)), sha256))


@functools.lru_cache(maxsize=4)
def _converted(path: str, sha256: str) -> nn.Module:
    from nas.models.onnx_import import load_onnx_model

    data = Path(path).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"{path} is not the stored model: sha256 {actual}, recorded {sha256}")
    return load_onnx_model(data).eval()

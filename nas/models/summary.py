"""What the catalog records of an uploaded model, read by running every check on it once.

:func:`read_model` is the whole acceptance of an upload (what the API's worker process runs): the
file checks, the conversion to torch, and the comparison of the converted module with
onnxruntime's outputs. A model that passes is one a trial can train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nas.models.onnx_import import (
    ModelLimits,
    check_onnx,
    compare_with_onnxruntime,
    default_opset,
    input_shape,
    to_torch,
)
from nas.safe_text import escape_controls
from nas.sparse.masks import prunable_weights, weight_kind

# Layer kinds as the catalog names them (masks' "conv2d" is the only convolution the converter builds).
_KIND_NAMES = {"conv2d": "conv", "linear": "linear"}


@dataclass
class ModelInfo:
    """One accepted model: its input (one example, no batch), output values per example, trainable
    parameters, prunable layers, default-domain opset and the program that wrote it.

    ``layers`` hold ``{"name", "kind", "shape", "params"}`` per prunable weight, named as
    :func:`nas.sparse.masks.prunable_weights` names them (the names a job's layer sparsities use).
    ``module`` is the converted network, in eval mode, for the reader to time without converting again.
    """

    input_shape: tuple[int, ...]
    num_outputs: int
    params: int
    layers: list[dict] = field(default_factory=list)
    opset: int = 0
    producer: str = ""
    module: nn.Module = field(kw_only=True, repr=False, compare=False)


def read_model(path: Path, limits: ModelLimits) -> ModelInfo:
    """Check, convert and compare the ONNX file at ``path``; ``ModelRejected`` names the first failed step."""
    proto = check_onnx(Path(path), limits)
    module = to_torch(proto)
    shape = input_shape(proto)
    compare_with_onnxruntime(proto, module, shape)
    layers = [
        {
            "name": name,
            "kind": _KIND_NAMES.get(weight_kind(owner), weight_kind(owner)),
            "shape": list(getattr(owner, attr).shape),
            "params": getattr(owner, attr).numel(),
        }
        for name, (owner, attr) in prunable_weights(module).items()
    ]
    # the file's own words: shown in listings, so escaped and kept short
    producer = escape_controls(" ".join(p for p in (proto.producer_name, proto.producer_version) if p)[:200])
    return ModelInfo(
        input_shape=shape,
        num_outputs=_output_values(module, shape),
        params=sum(p.numel() for p in module.parameters()),
        layers=layers,
        opset=default_opset(proto) or 0,
        producer=producer,
        module=module.eval(),
    )


def _output_values(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Values the output holds per example (a classifier's class count), from running one example:
    exporters often leave the output's shape unstated."""
    with torch.no_grad():
        out = module(torch.zeros((1, *shape)))
    return math.prod(out.shape[1:])

"""A trained trial's model for use outside sparse-nas: ONNX, or the stored safetensors.

**safetensors** is the stored format itself (:mod:`nas.sparse.serialization`): every
``state_dict`` tensor under its plain name (``fc0.weight``, ``fc0.bias``), each masked weight as
the forward pass sees it (zeros where pruned), a boolean ``<weight name>_mask`` beside it, and
string metadata (``search_space``, ``search_space_params``, ``arch``, ``dataset``,
``input_shape``, ``num_classes``) from which :func:`nas.training.load_trained_model` rebuilds
the network.

**ONNX** is the same network with the masks baked into plain weights: the model is rebuilt
from the safetensors bytes, every parametrization is removed (its current value kept), and
``torch.onnx.export`` (the ``torch.export``-based exporter) writes one self-contained graph
with input ``input`` of shape ``[batch, *input_shape]`` and output ``logits``, the batch
dimension dynamic. The safetensors metadata is copied into the ONNX ``metadata_props``. Every
export is run in onnxruntime against the torch model before it is returned.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.sparse.serialization import read_metadata

Format = Literal["safetensors", "onnx"]
FORMATS: tuple[Format, ...] = ("safetensors", "onnx")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# float32 through different kernels: far below what would change a prediction.
RTOL, ATOL = 1e-3, 1e-4

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not compute what the model does."""


def export_model(model_bytes: bytes, format: Format) -> bytes:
    """The stored model (``nas.sparse.serialization`` bytes) in ``format``."""
    if format == "safetensors":
        read_metadata(model_bytes)  # refuses what is not safetensors
        return model_bytes
    if format == "onnx":
        return to_onnx(model_bytes)
    raise ValueError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")


def bake_parametrizations(model: nn.Module) -> nn.Module:
    """Replace every parametrized tensor (masked weights, scores, N:M) by a plain parameter
    holding its current value, so the exported graph has no masking ops. In place."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def to_onnx(model_bytes: bytes, opset: int | None = None, check: bool = True) -> bytes:
    """ONNX bytes of the stored model, masks baked in; checked in onnxruntime when ``check``."""
    from nas.training import load_trained_model

    meta = read_metadata(model_bytes)
    input_shape = tuple(int(d) for d in _json_list(meta.get("input_shape")))
    model = bake_parametrizations(load_trained_model(model_bytes)).eval()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many kinds; the caller needs one
        raise ExportError(f"torch.onnx.export failed for a {meta.get('search_space')} model: {exc}") from exc
    proto = program.model_proto
    proto.doc_string = "sparse-nas trial model; masks baked into the weights"
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    if check:
        with torch.no_grad():
            expected = model(example).numpy()
        got = run_onnx(data, example.numpy())
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
            worst = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("nan")
            raise ExportError(f"the ONNX model differs from the torch model (max abs difference {worst:.3g})")
    return data


def run_onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The ONNX model's ``logits`` for input ``x`` in onnxruntime on the CPU, one thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]


def _json_list(value: str | None) -> list[int]:
    import json

    if value is None:
        raise ExportError("the model file has no input_shape in its metadata")
    return json.loads(value)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs progress and notes about optional packages (torchvision) that are
    noise in a server's log; keep only its errors."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)

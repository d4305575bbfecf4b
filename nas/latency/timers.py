"""How calibration times whole models: in local PyTorch, in local ONNX Runtime, or through agents.

A :class:`ModelTimer` takes ``(module, input_shape)`` pairs and returns the timing protocol's
statistics (``p10_ms``, ``median_ms``, ``iqr_ms`` ...) per model, interleaving the models in
rounds so that a slow phase of the machine spreads over all of them. Calibration
(:func:`nas.latency.calibrate.calibrate`) fits a predictor from any timer, so the same code
calibrates this machine's torch runtime (:class:`TorchTimer`), its ONNX Runtime
(:class:`OnnxTimer`), or a remote device whose agents receive :func:`module_to_onnx` exports.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.sparse.csr import CSRConv2d, CSRLinear, dense_layer
from nas.timing.onnx_timer import measure_onnx_interleaved
from nas.timing.runtimes import ONNXRUNTIME, TORCH

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@runtime_checkable
class ModelTimer(Protocol):
    """Times whole models on one runtime; ``runtime`` is a name from :data:`nas.timing.runtimes.RUNTIMES`."""

    runtime: str

    def time(
        self,
        models: Sequence[tuple[nn.Module, tuple[int, ...]]],
        batch_size: int,
        num_threads: int,
        min_run_time: float,
        rounds: int,
    ) -> list[dict[str, float]]:
        """Protocol statistics per model, in the order given."""
        ...


class TorchTimer:
    """PyTorch eager on this machine's CPU (or GPU), models as given (a CSR inference model runs CSR)."""

    def __init__(self, target: str = "cpu") -> None:
        self.target = target
        self.runtime = TORCH if target == "cpu" else "torch-cuda"

    def time(
        self,
        models: Sequence[tuple[nn.Module, tuple[int, ...]]],
        batch_size: int,
        num_threads: int,
        min_run_time: float,
        rounds: int,
    ) -> list[dict[str, float]]:
        from nas.timing.measure import measure_interleaved

        return measure_interleaved(list(models), self.target, batch_size, num_threads, min_run_time, rounds,
                                   reference=False)  # fmt: skip


class OnnxTimer:
    """ONNX Runtime on this machine: each module exported by :func:`module_to_onnx`, sessions timed in
    interleaved rounds with the same protocol as the torch measurement."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.runtime = ONNXRUNTIME if device == "cpu" else "onnxruntime-cuda"

    def time(
        self,
        models: Sequence[tuple[nn.Module, tuple[int, ...]]],
        batch_size: int,
        num_threads: int,
        min_run_time: float,
        rounds: int,
    ) -> list[dict[str, float]]:
        exported = [(module_to_onnx(module, shape), shape) for module, shape in models]
        return measure_onnx_interleaved(exported, batch_size, num_threads, min_run_time, rounds, self.device)


def _dense_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that ONNX can hold: CSR layers back to dense, mask parametrizations baked in."""
    graph = copy.deepcopy(module).eval()
    if isinstance(graph, (CSRLinear, CSRConv2d)):
        return dense_layer(graph)
    for path, child in list(graph.named_modules()):
        if isinstance(child, (CSRLinear, CSRConv2d)):
            graph.set_submodule(path, dense_layer(child))
    for child in list(graph.modules()):
        if parametrize.is_parametrized(child):
            _bake(child)
    return graph


def _bake(module: nn.Module) -> None:
    """Replace ``module``'s parametrized tensors by plain parameters holding their current values.

    Not ``parametrize.remove_parametrizations``: that deletes the properties from the parametrized
    class, which a deep copy shares with the original module (the original would lose its weight).
    """
    values = {name: getattr(module, name).detach().clone() for name in module.parametrizations.keys()}
    module.__class__ = module.__class__.__bases__[0]
    del module.parametrizations
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value, requires_grad=False))


def module_to_onnx(module: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> bytes:
    """ONNX bytes of ``module`` on inputs ``(batch, *input_shape)``: input ``"input"`` with a dynamic
    batch axis, output ``"output"`` (the first tensor the module returns); CSR layers and masked weights
    stored dense, since ONNX Runtime has no unstructured-sparse kernel faster than its dense one.

    Uses the TorchScript exporter: about 50 ms for a small model where the ``torch.export`` one takes
    seconds, which matters for the hundreds of layer samples a calibration exports.
    """
    graph = _First(_dense_copy(module))
    example = torch.zeros(batch_size, *input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, do_constant_folding=True,
        )  # fmt: skip
    return buffer.getvalue()


class _First(nn.Module):
    """The module's first output tensor only (an RNN returns its hidden state too)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        while isinstance(out, (tuple, list)):
            out = out[0]
        return out


def run_onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The ONNX model's output for ``x`` in ONNX Runtime (CPU, one thread)."""
    from nas.timing.onnx_timer import onnx_session

    session = onnx_session(onnx_bytes, 1)
    return session.run(None, {INPUT_NAME: x.astype(np.float32)})[0]

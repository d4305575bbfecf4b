"""Timing a model on a target device: the targets this machine has, and the measurement itself.

Both :mod:`nas.sparse` (the inference converter times candidate kernels) and :mod:`nas.latency`
(prediction, calibration) time models, so the timing sits below both; :mod:`nas.latency`
re-exports :func:`nas.timing.measure.measure` as the documented ``nas.latency.measure``.

The names below import torch on first use only: :mod:`nas.timing.protocol`,
:mod:`nas.timing.runtimes`, :mod:`nas.timing.onnx_timer` and :mod:`nas.timing.agent_targets` serve a measurement agent and the
light client, which have no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {  # ``measure`` is also the submodule's name: import it as ``nas.timing.measure.measure``
    "measure_interleaved": "nas.timing.measure",
    "TARGETS": "nas.timing.targets",
    "TargetUnavailable": "nas.timing.targets",
    "available_targets": "nas.timing.targets",
    "describe_targets": "nas.timing.targets",
}

__all__ = ["TARGETS", "TargetUnavailable", "available_targets", "describe_targets", "measure_interleaved"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nas.timing' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)

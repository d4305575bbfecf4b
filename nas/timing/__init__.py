"""Timing a model on a target device: the targets this machine has, and the measurement itself.

Both :mod:`nas.sparse` (the inference converter times candidate kernels) and :mod:`nas.latency`
(prediction, calibration) time models, so the timing sits below both; :mod:`nas.latency`
re-exports :func:`measure` as the documented ``nas.latency.measure``.
"""

from nas.timing.measure import measure, measure_interleaved
from nas.timing.targets import TARGETS, TargetUnavailable, available_targets, describe_targets

__all__ = ["TARGETS", "TargetUnavailable", "available_targets", "describe_targets", "measure", "measure_interleaved"]

"""Inference latency of models on a target device."""

from nas.latency.measure import TARGETS, measure

__all__ = ["TARGETS", "measure"]

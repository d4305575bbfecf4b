"""The roofline bound of a layer, the machine constants it needs, and the two baseline predictors.

A layer cannot run faster than its arithmetic at the machine's peak rate, nor than its bytes at
its memory bandwidth: ``t >= max(F / P, B / BW)``. On small layers Python and dispatch overheads
dominate instead, which is why the baselines add a constant per layer:

* roofline-only: ``T = sum_k (a_k * sum of roofline times of kind k + c_k * layers of kind k)``,
  the ``a`` and ``c`` fitted by non-negative least squares on relative error;
* FLOPs-only: ``T = a * FLOPs + c``, fitted the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls

from nas.latency.features import KINDS, Layer, Trace

# One core of the 2-vCPU Zen 3 / Xeon VMs this project calibrates on; used until a calibration measures them.
DEFAULT_CONSTANTS = {"peak_flops": 7.0e10, "bandwidth": 1.0e10}


def roofline_seconds(flops: float, moved: float, constants: dict[str, float]) -> float:
    """``max(F / P, B / BW)`` in seconds."""
    return max(flops / constants["peak_flops"], moved / constants["bandwidth"])


def with_roofline(layer: Layer, constants: dict[str, float]) -> dict[str, float]:
    """The layer's features with ``roofline`` (microseconds) filled in."""
    flops = layer.x.get("flops", 0.0)
    return {**layer.x, "roofline": roofline_seconds(flops, layer.x.get("bytes", 0.0), constants) * 1e6}


def measure_constants(num_threads: int = 1, device: str = "cpu", seconds: float = 0.3) -> dict[str, float]:
    """Peak FLOP/s (best of square GEMMs) and bandwidth (best of large copies) on ``num_threads`` threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        a = torch.randn(512, 512, device=device)
        b = torch.randn(512, 512, device=device)
        src = torch.empty(16 << 20, device=device)  # 64 MiB, beyond the last-level cache
        dst = torch.empty_like(src)
        best_mm = _best(lambda: torch.mm(a, b), seconds, device)
        best_copy = _best(lambda: dst.copy_(src), seconds, device)
    finally:
        torch.set_num_threads(threads)
    return {"peak_flops": 2 * 512**3 / best_mm, "bandwidth": 2 * src.numel() * 4 / best_copy}


def _best(fn: Any, seconds: float, device: str) -> float:
    fn()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _roofline_design(traces: Sequence[Trace], constants: dict[str, float]) -> np.ndarray:
    """Per model: for each kind, its summed roofline time (ms) and its layer count."""
    kinds = list(KINDS)
    rows = np.zeros((len(traces), 2 * len(kinds)))
    for i, trace in enumerate(traces):
        for layer in trace.layers:
            j = kinds.index(layer.kind)
            rows[i, j] += roofline_seconds(layer.x.get("flops", 0.0), layer.x.get("bytes", 0.0), constants) * 1e3
            rows[i, len(kinds) + j] += 1
    return rows


def _flops_design(traces: Sequence[Trace]) -> np.ndarray:
    return np.array([[sum(l.x.get("flops", 0.0) for l in t.layers) / 1e6, 1.0] for t in traces])


def _fit_relative(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative error ``(design @ c - y) / y``."""
    scale = 1.0 / np.asarray(y)
    coef, _ = nnls(design * scale[:, None], np.ones_like(scale), maxiter=50 * design.shape[1])
    return coef


class Baselines:
    """The FLOPs-only and roofline-only models, fitted on whole-model measurements."""

    def __init__(self, constants: dict[str, float]) -> None:
        self.constants = constants
        self.roofline_coef: np.ndarray | None = None
        self.flops_coef: np.ndarray | None = None

    def fit(self, traces: Sequence[Trace], latencies_ms: Sequence[float]) -> Baselines:
        y = np.asarray(latencies_ms, dtype=float)
        self.roofline_coef = _fit_relative(_roofline_design(traces, self.constants), y)
        self.flops_coef = _fit_relative(_flops_design(traces), y)
        return self

    def roofline(self, traces: Sequence[Trace]) -> np.ndarray:
        return _roofline_design(traces, self.constants) @ self.roofline_coef

    def flops(self, traces: Sequence[Trace]) -> np.ndarray:
        return _flops_design(traces) @ self.flops_coef

"""The timing protocol every latency in the service is measured with, on any runtime.

Per-call times (a block average hides a shared machine's bimodal timings), in rounds whose medians
are pooled by their median, a noisy result (IQR above 10% of the median) timed once more for
longer. numpy only: a measurement agent timing ONNX Runtime imports this without torch, and its
numbers mean what the service's own :func:`nas.timing.measure.measure` numbers mean.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

NOISY = 0.1  # IQR / median above which a measurement is repeated once, longer
WARMUP_CALLS = 10


def time_calls(fn: Callable[[], Any], min_run_time: float, min_calls: int = 10) -> np.ndarray:
    """Seconds taken by each of at least ``min_calls`` calls of ``fn``, calling for ``min_run_time`` seconds.

    The garbage collector is paused meanwhile, so a collection does not land inside one call.
    """
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        clock = time.perf_counter
        deadline = clock() + min_run_time
        while True:
            start = clock()
            fn()
            end = clock()
            times.append(end - start)
            if end >= deadline and len(times) >= min_calls:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(times)


def summary(rounds: list[np.ndarray]) -> dict[str, float]:
    """Median of round medians, and quantiles of all calls pooled, in milliseconds."""
    pooled = np.concatenate(rounds) * 1e3
    p10, p25, p75, p90 = np.percentile(pooled, [10, 25, 75, 90])
    return {
        "median_ms": float(statistics.median(float(np.median(r)) * 1e3 for r in rounds)),
        "iqr_ms": float(p75 - p25),
        "p10_ms": float(p10),
        "p25_ms": float(p25),
        "p75_ms": float(p75),
        "p90_ms": float(p90),
        "min_ms": float(pooled.min()),
        "runs": int(pooled.size),
        "rounds": len(rounds),
    }


def measure_calls(fn: Callable[[], Any], min_run_time: float = 0.2, rounds: int = 3) -> dict[str, float]:
    """The protocol's statistics for any call (an onnxruntime session's ``run``, a torch model's
    forward pass), after :data:`WARMUP_CALLS` calls of warm-up.

    The caller sets the thread count of whatever ``fn`` runs. Returns ``median_ms`` (the median of
    the rounds' median call times), ``iqr_ms``, ``p10_ms``, ``p25_ms``, ``p75_ms``, ``p90_ms``,
    ``min_ms``, ``runs``, ``rounds`` and ``noisy`` (1.0 if the spread stayed above 10% of the median
    after one longer re-measurement).
    """
    if rounds < 1 or min_run_time <= 0:
        raise ValueError(f"rounds must be at least 1 and min_run_time positive, got {rounds} and {min_run_time}")
    for _ in range(WARMUP_CALLS):
        fn()
    return in_rounds(lambda seconds: time_calls(fn, seconds), min_run_time, rounds)


def in_rounds(round_: Callable[[float], np.ndarray], min_run_time: float, rounds: int) -> dict[str, float]:
    """Time ``rounds`` rounds of ``min_run_time / rounds`` seconds; a noisy result is timed once more, longer."""
    result = summary([round_(min_run_time / rounds) for _ in range(rounds)])
    if result["iqr_ms"] > NOISY * result["median_ms"]:
        retry = summary([round_(4 * min_run_time / rounds) for _ in range(rounds)])
        result = min(result, retry, key=lambda r: r["iqr_ms"] / r["median_ms"])
    return {**result, "noisy": float(result["iqr_ms"] > NOISY * result["median_ms"])}

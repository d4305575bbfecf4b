"""The ONNX Runtime timer, with the service's timing protocol and no torch: an agent on a small
board installs only onnxruntime and numpy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.timing.protocol import WARMUP_CALLS, measure_calls, summary, time_calls


def onnx_session(onnx_bytes: bytes, num_threads: int = 1, device: str = "cpu") -> Any:
    """An InferenceSession on ``num_threads`` intra-op threads, one inter-op thread, full graph optimisation."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=providers)


def measure_onnx(
    onnx_bytes: bytes,
    input_shape: Sequence[int],
    batch_size: int = 1,
    num_threads: int = 1,
    min_run_time: float = 0.2,
    rounds: int = 3,
    device: str = "cpu",
) -> dict[str, float]:
    """Latency of an ONNX model under onnxruntime on inputs of ``(batch_size, *input_shape)``, with the
    statistics of :func:`nas.timing.protocol.measure_calls` (the same as the torch measurement's)."""
    session = onnx_session(onnx_bytes, num_threads, device)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)
    result = measure_calls(lambda: session.run(None, {name: x}), min_run_time, rounds)
    return {**result, "num_threads": num_threads, "batch_size": batch_size}


def measure_onnx_interleaved(
    models: Sequence[tuple[bytes, Sequence[int]]],
    batch_size: int = 1,
    num_threads: int = 1,
    min_run_time: float = 0.2,
    rounds: int = 3,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """:func:`measure_onnx` for many models at once, round-robin: each round times every model for
    ``min_run_time / rounds`` seconds, so a slow phase of a shared machine spreads over all of them
    (as :func:`nas.timing.measure.measure_interleaved` does for torch). Statistics as :func:`measure_onnx`'s."""
    calls = []
    for onnx_bytes, shape in models:
        session = onnx_session(onnx_bytes, num_threads, device)
        name = session.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal((batch_size, *shape)).astype(np.float32)
        calls.append(lambda session=session, name=name, x=x: session.run(None, {name: x}))
    times: list[list[np.ndarray]] = [[] for _ in calls]
    for _ in range(rounds):
        for i, fn in enumerate(calls):
            for _ in range(WARMUP_CALLS):
                fn()
            times[i].append(time_calls(fn, min_run_time / rounds))
    return [{**summary(t), "num_threads": num_threads, "batch_size": batch_size} for t in times]


def onnxruntime_version() -> str | None:
    """onnxruntime's version, or None where it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)

"""Timing one task's model under the runtime the task names, with the service's timing protocol.

Every model arrives as ONNX (never a pickle). ``onnxruntime`` and ``onnxruntime-cuda`` time it as it
is. ``torch`` converts it with the service's own converter (:mod:`nas.models.onnx_import`, which
builds modules from a closed set of operators and executes nothing from the file), lets
:func:`nas.sparse.inference.to_inference` choose each layer's kernel (dense, shrunk or CSR) by
timing the candidates on this device, and times the result in eager mode. ``torch-cuda`` converts
it, stores eligible Linear weights as 2:4 semi-structured sparse tensors in fp16
(:func:`nas.latency.cuda.to_semi_structured`) and times it on the GPU with CUDA events. torch is
imported only by the two torch runtimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nas.timing.onnx_timer import measure_onnx
from nas.timing.runtimes import MODEL_FORMAT, ONNXRUNTIME, ONNXRUNTIME_CUDA, TORCH, TORCH_CUDA

MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Timing:
    """What a task asks for: the runtime, one example's input shape, and the protocol's parameters."""

    runtime: str
    input_shape: tuple[int, ...]
    batch_size: int = 1
    num_threads: int = 1
    min_run_time: float = 0.2
    rounds: int = 3

    @classmethod
    def from_task(cls, task: dict[str, Any]) -> Timing:
        """The timing a leased task asks for; ``ValueError`` for a format or field the agent cannot take."""
        if task.get("format", MODEL_FORMAT) != MODEL_FORMAT:
            raise ValueError(f"model format {task.get('format')!r} is not supported: the agent times ONNX models")
        return cls(
            runtime=str(task["runtime"]),
            input_shape=tuple(int(d) for d in task["input_shape"]),
            batch_size=int(task.get("batch_size") or 1),
            num_threads=int(task.get("num_threads") or 1),
            min_run_time=float(task.get("min_run_time") or 0.2),
            rounds=int(task.get("rounds") or 3),
        )


def measure_model(onnx_bytes: bytes, timing: Timing) -> dict[str, float]:
    """The protocol's statistics (``p10_ms``, ``median_ms``, ``iqr_ms``, ``runs``, ``noisy``...) of the
    model under ``timing.runtime``; the torch runtimes add how many layers run sparse kernels."""
    if timing.runtime in (ONNXRUNTIME, ONNXRUNTIME_CUDA):
        device = "cuda" if timing.runtime == ONNXRUNTIME_CUDA else "cpu"
        return measure_onnx(
            onnx_bytes, timing.input_shape, timing.batch_size, timing.num_threads, timing.min_run_time, timing.rounds,
            device=device,
        )  # fmt: skip
    if timing.runtime == TORCH:
        return _measure_torch(onnx_bytes, timing)
    if timing.runtime == TORCH_CUDA:
        return _measure_torch_cuda(onnx_bytes, timing)
    raise ValueError(f"unknown runtime {timing.runtime!r}")


def task_result(onnx_bytes: bytes, task: dict[str, Any], offered: Sequence[dict[str, str]]) -> dict[str, Any]:
    """The body of a task's result: ``{"stats", "runtime"}`` of the timed model, or ``{"error"}`` saying
    why it could not be timed (a model that fails to load or run, a runtime this agent does not offer).

    ``offered`` are the agent's runtimes (``{"name", "version", "device"}``); the result names the one used.
    """
    try:
        timing = Timing.from_task(task)
        runtime = next((r for r in offered if r["name"] == timing.runtime), None)
        if runtime is None:
            names = ", ".join(r["name"] for r in offered)
            raise ValueError(f"runtime {timing.runtime!r} is not offered by this agent (it offers {names})")
        return {"stats": measure_model(onnx_bytes, timing), "runtime": dict(runtime)}
    except Exception as exc:  # a bad model or a runtime's failure is the task's result, never the agent's end
        return {"error": f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]}


def _convert(onnx_bytes: bytes) -> Any:
    """The ONNX model as a torch module (checked against the limits in ``NAS_LIMIT_MODEL_*``), in eval mode."""
    from nas.models.onnx_import import load_onnx_model

    return load_onnx_model(onnx_bytes).eval()


def _measure_torch(onnx_bytes: bytes, timing: Timing) -> dict[str, float]:
    from nas.sparse.inference import to_inference
    from nas.timing.measure import measure

    model, decisions = to_inference(
        _convert(onnx_bytes), timing.input_shape, timing.batch_size, num_threads=timing.num_threads
    )
    stats = measure(
        model, timing.input_shape, "cpu", timing.batch_size, timing.num_threads, timing.min_run_time, timing.rounds
    )
    return {**stats, "csr_layers": sum(d["kernel"] == "csr" for d in decisions), "layers": len(decisions)}


def _measure_torch_cuda(onnx_bytes: bytes, timing: Timing) -> dict[str, float]:
    """Timed in place on the GPU, with CUDA events, as :func:`nas.timing.measure.measure` times on
    ``cuda``: that function times a copy, and a semi-structured weight cannot be copied."""
    import torch

    from nas.latency.cuda import semi_structured_layers, to_semi_structured
    from nas.timing.measure import time_calls, timing_context
    from nas.timing.protocol import WARMUP_CALLS, in_rounds

    model = to_semi_structured(_convert(onnx_bytes))
    dtype = next((p.dtype for p in model.parameters()), torch.float16)
    x = torch.randn(timing.batch_size, *timing.input_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(device="cuda", dtype=dtype)
    with timing_context(timing.num_threads):
        for _ in range(WARMUP_CALLS):
            model(x)
        torch.cuda.synchronize()
        stats = in_rounds(
            lambda seconds: time_calls(lambda: model(x), seconds, cuda=True), timing.min_run_time, timing.rounds
        )
    return {
        **stats, "num_threads": timing.num_threads, "batch_size": timing.batch_size,
        "semi_structured_layers": len(semi_structured_layers(model)),
    }  # fmt: skip

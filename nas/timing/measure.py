"""Measured inference latency, tightened for noisy shared machines.

A shared VM's timings are bimodal: most calls run undisturbed, a few are descheduled for
milliseconds, and whole phases run slower while a co-tenant is busy. So every forward pass is
timed on its own (per-call quantiles show both modes; a block average hides them), a measurement
is split into rounds whose medians are pooled by their median (a slow phase spoils one round, not
the result), a noisy result (IQR above 10% of the median) is measured again for longer, and
:func:`measure_interleaved` times many models round-robin beside a fixed reference model, so that
drift hits all of them alike and can be divided out.

On ``cuda`` each call is timed with a pair of CUDA events, which time the GPU's work rather than
the Python launch loop.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.timing import protocol
from nas.timing.protocol import WARMUP_CALLS, in_rounds, measure_calls, summary
from nas.timing.targets import CUDA, TARGETS, require_target

__all__ = ["TARGETS", "measure", "measure_calls", "measure_interleaved", "reference_model", "time_calls", "timing_context"]



def time_calls(fn: Callable[[], Any], min_run_time: float, min_calls: int = 10, cuda: bool = False) -> np.ndarray:
    """:func:`nas.timing.protocol.time_calls`, or per-call GPU times from CUDA events with ``cuda``."""
    if not cuda:
        return protocol.time_calls(fn, min_run_time, min_calls)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _time_cuda_calls(fn, min_run_time, min_calls)
    finally:
        if gc_was_enabled:
            gc.enable()


def _time_cuda_calls(fn: Callable[[], Any], min_run_time: float, min_calls: int) -> np.ndarray:
    """Per-call GPU times from CUDA event pairs; events are read after one synchronisation at the end."""
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    deadline = time.perf_counter() + min_run_time
    while time.perf_counter() < deadline or len(events) < min_calls:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
        if len(events) % 256 == 0:
            torch.cuda.synchronize()  # bound the queue, so wall time tracks GPU time
    torch.cuda.synchronize()
    return np.asarray([start.elapsed_time(end) / 1e3 for start, end in events])


@contextmanager
def timing_context(num_threads: int) -> Iterator[None]:
    """Torch on ``num_threads`` threads, denormals flushed, no autograd; everything restored on exit."""
    threads = torch.get_num_threads()
    flush = torch.set_flush_denormal(True)
    torch.set_num_threads(num_threads)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)
        if flush:
            torch.set_flush_denormal(False)


class _Runner:
    """One model ready to time: in eval mode, on the target's device, with a fixed input."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], target: str, batch_size: int) -> None:
        self.cuda = target == CUDA
        self.original = model
        self.model = copy.deepcopy(model).to("cuda") if self.cuda else model
        self.was_training = model.training
        self.model.eval()
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, *input_shape, generator=generator)
        self.x = x.to("cuda") if self.cuda else x
        dtype = _parameter_dtype(self.model)
        if dtype is not None and dtype != self.x.dtype and dtype.is_floating_point:
            self.x = self.x.to(dtype)  # e.g. an fp16 model with 2:4 semi-structured weights
        self._cache: Any = None

    def __enter__(self) -> _Runner:
        self._cache = parametrize.cached()
        self._cache.__enter__()  # masks applied once, as in a deployed model whose zeros are baked in
        for _ in range(WARMUP_CALLS):  # allocator, caches, oneDNN primitives, lazy initialisation
            self.model(self.x)
        if self.cuda:
            torch.cuda.synchronize()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cache.__exit__(*exc)
        self.original.train(self.was_training)

    def round(self, min_run_time: float) -> np.ndarray:
        model, x = self.model, self.x
        return time_calls(lambda: model(x), min_run_time, cuda=self.cuda)


def _parameter_dtype(model: nn.Module) -> torch.dtype | None:
    for tensor in model.parameters():
        return tensor.dtype
    return None


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: str = "cpu",
    batch_size: int = 1,
    num_threads: int = 1,
    min_run_time: float = 0.2,
    rounds: int = 3,
) -> dict[str, float]:
    """Latency of ``model`` on inputs of ``(batch_size, *input_shape)``, in eval mode without autograd.

    Each forward pass is timed alone, for ``min_run_time`` seconds split into ``rounds`` rounds.
    Returns ``median_ms`` (the median of the rounds' median call times), ``iqr_ms``, ``p10_ms``,
    ``p25_ms``, ``p75_ms``, ``p90_ms`` and ``min_ms`` (quantiles of all calls), ``runs``,
    ``rounds``, ``num_threads``, ``batch_size`` and ``noisy`` (1.0 if the spread stayed above 10% of
    the median after one longer re-measurement, else 0.0). Torch's thread count is ``num_threads``
    only while measuring. Masks are applied once per measurement (``parametrize.cached``), as in a
    deployed model whose zeros are baked into the weights. On ``cuda`` the model is timed on a copy
    moved to the GPU.
    """
    require_target(target)
    if rounds < 1 or min_run_time <= 0:
        raise ValueError(f"rounds must be at least 1 and min_run_time positive, got {rounds} and {min_run_time}")
    with timing_context(num_threads), _Runner(model, input_shape, target, batch_size) as runner:
        result = in_rounds(runner.round, min_run_time, rounds)
    return {**result, "num_threads": num_threads, "batch_size": batch_size}


def reference_model() -> tuple[nn.Module, tuple[int, ...]]:
    """A fixed small CNN with an MLP head (convolutions, GEMMs, element-wise ops and Python overhead all
    play a part), timed beside other models to divide out the machine's drift, and to rescale a
    predictor calibrated on another machine."""
    generator = torch.Generator().manual_seed(1234)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval(), (3, 16, 16)


def measure_interleaved(
    entries: Sequence[tuple[nn.Module, tuple[int, ...]]],
    target: str = "cpu",
    batch_size: int = 1,
    num_threads: int = 1,
    min_run_time: float = 0.1,
    rounds: int = 3,
    reference: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, float]]:
    """Measure many models round-robin: each round times every model once for ``min_run_time / rounds``.

    A slow phase of the machine then spreads over all models instead of spoiling one. With
    ``reference``, :func:`reference_model` is timed at the start of every round and after every
    eighth model; each model's round median is divided by the reference's median nearest in time
    and multiplied by the reference's median over the whole session, giving ``normalized_ms``
    beside the raw ``median_ms`` (as :func:`measure`) and ``reference_ms``; ``normalized_p25_ms``
    and ``normalized_p10_ms`` do the same with those per-call percentiles.
    """
    require_target(target)
    per_round = min_run_time / rounds
    ref_model, ref_shape = reference_model()
    times: list[list[np.ndarray]] = [[] for _ in entries]
    ratios: list[list[np.ndarray]] = [[] for _ in entries]
    ref_medians: list[np.ndarray] = []
    total, done = len(entries) * rounds, 0
    with timing_context(num_threads):
        ref_runner = _Runner(ref_model, ref_shape, target, batch_size) if reference else None
        runners = [_Runner(model, shape, target, batch_size) for model, shape in entries]
        for r in range(rounds):
            ref_now = _time_reference(ref_runner, per_round, ref_medians)
            for i, runner in enumerate(runners):
                if reference and i and i % 8 == 0:
                    ref_now = _time_reference(ref_runner, per_round, ref_medians)
                with runner:
                    call_times = runner.round(per_round)
                times[i].append(call_times)
                if ref_now is not None:
                    ratios[i].append(np.percentile(call_times, _QUANTILES) / ref_now)
                done += 1
                if progress is not None:
                    progress(done, total)
    ref_session = np.median(np.array(ref_medians), axis=0) if ref_medians else None
    results = []
    for model_times, model_ratios in zip(times, ratios):
        result = {**summary(model_times), "num_threads": num_threads, "batch_size": batch_size}
        if ref_session is not None:
            normalized = np.median(np.array(model_ratios), axis=0) * ref_session * 1e3
            for name, value in zip(_NORMALIZED, normalized):
                result[name] = float(value)
            result["reference_ms"] = float(ref_session[_QUANTILES.index(50)]) * 1e3
        results.append(result)
    return results


_QUANTILES = [50, 25, 10]  # per-round statistics divided by the reference's same statistic
_NORMALIZED = ["normalized_ms", "normalized_p25_ms", "normalized_p10_ms"]


def _time_reference(runner: _Runner | None, seconds: float, medians: list[np.ndarray]) -> np.ndarray | None:
    if runner is None:
        return None
    with runner:
        stats = np.percentile(runner.round(seconds), _QUANTILES)
    medians.append(stats)
    return stats

"""Measured inference latency: the median of timed forward passes, with its spread."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils import benchmark

TARGETS = ("cpu",)  # targets this module can time on the local machine
_NOISY = 0.1  # IQR / median above which a measurement is repeated once, longer


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: str = "cpu",
    batch_size: int = 1,
    num_threads: int = 1,
    min_run_time: float = 0.2,
) -> dict[str, float]:
    """Latency of ``model`` on inputs of ``(batch_size, *input_shape)``, in eval mode without autograd.

    Returns ``median_ms``, ``iqr_ms``, ``runs`` (timed forward passes), ``num_threads`` and
    ``batch_size``. Torch's thread count is ``num_threads`` only while measuring. Masks are
    applied once per measurement (``parametrize.cached``), as in a deployed model whose zeros are
    baked into the weights. If the spread exceeds 10% of the median, it measures once more for
    four times as long and keeps the tighter result.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown latency target {target!r}; valid: {', '.join(TARGETS)}")
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=num_threads)
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(num_threads)
    try:
        with torch.no_grad(), parametrize.cached():
            timer.timeit(10)  # warm-up: allocator, caches, lazy initialisation
            result = timer.blocked_autorange(min_run_time=min_run_time)
            if result.iqr > _NOISY * result.median:
                retry = timer.blocked_autorange(min_run_time=4 * min_run_time)
                result = min(result, retry, key=lambda m: m.iqr / m.median)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return {
        "median_ms": result.median * 1e3,
        "iqr_ms": result.iqr * 1e3,
        "runs": result.number_per_run * len(result.raw_times),
        "num_threads": num_threads,
        "batch_size": batch_size,
    }

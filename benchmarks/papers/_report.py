"""What every paper reproduction prints beside its table: the machine it ran on, and mean ± std cells."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path


def machine() -> str:
    """CPU model, core count, torch threads, versions, date and load average, as one markdown line."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"{cpu}, {os.cpu_count()} cores (torch on {torch.get_num_threads()} thread(s)), torch {torch.__version__}, "
        f"Python {platform.python_version()}; {date}; load average at the end {load}"
    )


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± std`` (sample std over seeds; ± 0 for a single seed)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"

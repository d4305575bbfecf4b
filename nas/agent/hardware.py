"""What this device is and which runtimes it can time models with, as the agent registers them.

A latency means little without the machine it was measured on, so the agent sends its CPU, core
count, memory, OS and accelerator along with each runtime's name, version and device. Detecting the
runtimes imports only what a candidate runtime needs: an agent offering only ``onnxruntime`` never
imports torch (on a small board that import alone takes seconds and hundreds of MB).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

from nas.timing.runtimes import ONNXRUNTIME, ONNXRUNTIME_CUDA, RUNTIMES, TORCH, TORCH_CUDA


class RuntimeUnavailable(ValueError):
    """A runtime the agent was asked to offer that is unknown or not installed here."""


def describe(runtimes: Iterable[dict[str, str]] = ()) -> dict[str, Any]:
    """The hardware description the agent registers: ``cpu``, ``cores``, ``memory_gb``, ``os``,
    ``machine``, ``python`` and ``accelerator`` (the GPU's name, or None).

    ``runtimes`` are the ones offered (:func:`offered_runtimes`): the GPU is named through torch
    only where a torch runtime is offered, else through ``nvidia-smi`` where a CUDA runtime is.
    """
    names = {r["name"] for r in runtimes}
    gpu = accelerator(torch=bool(names & {TORCH, TORCH_CUDA}), cuda=bool(names & {TORCH_CUDA, ONNXRUNTIME_CUDA}))
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "memory_gb": memory_gb(),
        "os": f"{platform.system()} {platform.release()}".strip(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "accelerator": gpu,
    }


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s ``model name``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(("model name", "Model")):  # x86; Raspberry Pi and other ARM boards
                    return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def memory_gb() -> float | None:
    """Physical memory in GiB (one decimal), or None where the OS does not say (no ``sysconf``)."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def accelerator(torch: bool, cuda: bool) -> str | None:
    """The GPU's name: through torch when ``torch`` (already imported for a torch runtime), else
    ``nvidia-smi`` when a ``cuda`` runtime is offered; None without either."""
    if torch and _torch_cuda():
        import torch as torch_module

        return str(torch_module.cuda.get_device_name(0))
    if cuda and shutil.which("nvidia-smi"):
        try:
            names = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            ).stdout.split("\n")
        except (OSError, subprocess.SubprocessError):
            return None
        return names[0].strip() or None
    return None


def offered_runtimes(only: Iterable[str] | None = None) -> list[dict[str, str]]:
    """``{"name", "version", "device"}`` of every runtime present here, or of those in ``only``.

    A runtime in ``only`` that is unknown or not installed raises :class:`RuntimeUnavailable`
    naming the runtimes that are present. ``torch`` needs ``onnx`` beside torch: every model comes
    as ONNX and is converted by :mod:`nas.models.onnx_import`.
    """
    wanted = list(dict.fromkeys(only)) if only else list(RUNTIMES)
    unknown = [name for name in wanted if name not in RUNTIMES]
    if unknown:
        raise RuntimeUnavailable(f"unknown runtime {unknown[0]!r}; runtimes: {', '.join(RUNTIMES)}")
    offered = [runtime for runtime in map(runtime_info, wanted) if runtime is not None]
    missing = [name for name in wanted if name not in {r["name"] for r in offered}]
    if only and missing:
        present = [r["name"] for r in offered_runtimes()]
        raise RuntimeUnavailable(
            f"runtime {missing[0]!r} is not available here; present: {', '.join(present) or 'none'} "
            f"(install onnxruntime, or torch and onnx)"
        )
    return offered


def runtime_info(name: str) -> dict[str, str] | None:
    """One runtime's description, or None where it is not installed (or has no GPU)."""
    if name in (ONNXRUNTIME, ONNXRUNTIME_CUDA):
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        import onnxruntime

        if name == ONNXRUNTIME_CUDA and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return None
        device = "cuda" if name == ONNXRUNTIME_CUDA else "cpu"
        return {"name": name, "version": str(onnxruntime.__version__), "device": device}
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx") is None:
        return None
    if name == TORCH_CUDA and not _torch_cuda():
        return None
    import torch

    return {"name": name, "version": str(torch.__version__), "device": "cuda" if name == TORCH_CUDA else "cpu"}


def _torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())

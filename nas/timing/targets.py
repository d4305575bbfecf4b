"""Latency targets: the devices a model can be timed on, and the identity a predictor is keyed by.

A latency belongs to a device, a thread count, a batch size and a torch build; a predictor
calibrated under one of these says little about another, so :class:`TargetIdentity` names all of
them and predictors are stored and looked up by it.
"""

from __future__ import annotations

import hashlib
import platform
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch
from pydantic import BaseModel, Field

CPU, CUDA = "cpu", "cuda"
_DESCRIPTIONS = {
    CPU: "this machine's CPU, PyTorch eager on a fixed number of threads (1 by default); sparse layers run "
    "dense, shrunk or as CSR products, whichever the inference model chose",
    CUDA: "this machine's NVIDIA GPU, timed with CUDA events; 2:4 semi-structured sparse Linear layers run "
    "through torch.sparse.to_sparse_semi_structured (fp16)",
}


class TargetUnavailable(ValueError):
    """A target that is unknown, or not present on this machine (``cuda`` without a GPU)."""


class TargetParams(BaseModel):
    """What, besides the device, a latency depends on; both are part of a predictor's identity."""

    num_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads while timing")
    batch_size: int = Field(1, ge=1, le=4096, description="examples per forward pass")


def all_targets() -> tuple[str, ...]:
    """Every target this module knows, present here or not."""
    return (CPU, CUDA)


def available_targets() -> list[str]:
    """The targets present on this machine: ``cpu``, and ``cuda`` when torch sees a GPU."""
    return [CPU, CUDA] if torch.cuda.is_available() else [CPU]


def describe_targets() -> list[dict[str, Any]]:
    """One catalog entry per present target: name, description, JSON Schema of its params, device name."""
    return [
        {
            "name": name,
            "description": _DESCRIPTIONS[name],
            "device": device_name(name),
            "params_schema": TargetParams.model_json_schema(),
        }
        for name in available_targets()
    ]


def require_target(target: str) -> None:
    """Raise :class:`TargetUnavailable` naming the valid targets unless ``target`` is present here."""
    if target not in all_targets():
        raise TargetUnavailable(f"unknown latency target {target!r}; valid: {', '.join(available_targets())}")
    if target not in available_targets():
        raise TargetUnavailable(
            f"latency target {target!r} is not available on this machine (torch.cuda.is_available() is False); "
            f"valid: {', '.join(available_targets())}"
        )


@lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s ``model name``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(target: str) -> str:
    """The device a target runs on, as a person would name it."""
    if target == CUDA:
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return cpu_model()


def torch_version() -> str:
    """Torch's version without the local build tag ('2.13.0+cpu' and '2.13.0+cu126' time differently, but
    the device already tells them apart)."""
    return torch.__version__.split("+")[0]


@dataclass(frozen=True)
class TargetIdentity:
    """Everything a measured latency depends on besides the model."""

    target: str
    device: str
    num_threads: int
    batch_size: int
    torch: str

    def key(self) -> str:
        """A file-name-safe key: readable parts plus a short hash of the device name."""
        digest = hashlib.sha256(self.device.encode()).hexdigest()[:10]
        return f"{self.target}-{digest}-t{self.num_threads}-b{self.batch_size}-torch{self.torch}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetIdentity:
        return cls(
            target=str(data["target"]), device=str(data["device"]), num_threads=int(data["num_threads"]),
            batch_size=int(data["batch_size"]), torch=str(data["torch"]),
        )  # fmt: skip

    def same_machine(self, other: TargetIdentity) -> bool:
        """Whether ``other`` was measured on this device with these threads and torch (batch aside)."""
        return (self.target, self.device, self.num_threads, self.torch) == (
            other.target, other.device, other.num_threads, other.torch,
        )  # fmt: skip


def identity(target: str = CPU, num_threads: int = 1, batch_size: int = 1) -> TargetIdentity:
    """The identity of ``target`` on this machine (refused if the target is not present)."""
    require_target(target)
    if num_threads < 1 or batch_size < 1:
        raise ValueError(f"num_threads and batch_size must be at least 1, got {num_threads} and {batch_size}")
    return TargetIdentity(target, device_name(target), num_threads, batch_size, torch_version())


TARGETS: tuple[str, ...] = tuple(available_targets())  # targets present here, fixed at import

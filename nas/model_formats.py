"""The formats a trial's model downloads in: one definition for the API, the SDK, the CLI and :mod:`nas.export`.

Pure Python, so the light client imports it without torch.
"""

from __future__ import annotations

from typing import Literal

Format = Literal["safetensors", "onnx", "inference", "report"]
FORMATS: tuple[Format, ...] = ("safetensors", "onnx", "inference", "report")
"""``safetensors``: the stored masked model; ``onnx``: the sparse inference model in ONNX (CSR layers
dense); ``inference``: the torch sparse inference model (safetensors plus JSON); ``report``: the
per-layer sparsity report (JSON)."""

EXPORTED: tuple[Format, ...] = ("onnx", "inference", "report")
"""The formats made together from the stored ``safetensors`` model, on the first request for one."""

SUFFIXES: dict[str, str] = {
    "safetensors": "safetensors", "onnx": "onnx", "inference": "inference.safetensors", "report": "report.json",
}  # fmt: skip
"""Each format's file name ending: ``trial-<id>.<suffix>``."""

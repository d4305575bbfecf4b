"""Runtimes a model can be timed under: the names agents offer and jobs ask for.

``torch`` times the sparse inference model (CSR or shrunk layers, as the device chooses them) in
PyTorch eager on the CPU; ``onnxruntime`` times the same model exported to ONNX, the way many users
deploy. ONNX Runtime runs every layer dense, so unstructured sparsity buys nothing there; only
shrunk (channel-pruned) layers are faster. ``torch-cuda`` and ``onnxruntime-cuda`` are the same on
an NVIDIA GPU (``torch-cuda`` with 2:4 semi-structured Linear layers where the weights allow).
Names only: the light client validates job specs with them, without numpy.
"""

from __future__ import annotations

TORCH, ONNXRUNTIME, TORCH_CUDA, ONNXRUNTIME_CUDA = "torch", "onnxruntime", "torch-cuda", "onnxruntime-cuda"
RUNTIMES: tuple[str, ...] = (TORCH, ONNXRUNTIME, TORCH_CUDA, ONNXRUNTIME_CUDA)
MODEL_FORMAT = "onnx"
"""What every runtime receives: ONNX (never a pickle). The torch runtimes convert it with the
service's own converter and choose their kernels on the device."""

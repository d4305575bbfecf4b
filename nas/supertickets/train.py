"""The training loop shared by the ticket strategies' ``run_trial`` overrides.

They train as :func:`nas.training.run_trial` does (same data, seed, optimizer and per-epoch
report) and end their trials with :func:`nas.training.end_trial`, but own the loop, because a
supernet step runs several sub-networks and a lottery round starts from its parent's masks and
rewind weights.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from nas import registry
from nas.specs import JobSpec
from nas.training import Data, epoch_metrics, model_device

Report = Callable[[int, dict[str, float]], None]


def cross_entropy_step(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """A plain training step's forward and backward; returns the batch loss."""

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        return loss.item()

    return step


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    spec: JobSpec,
    seed: int,
    report: Report,
    epochs: int,
    *,
    max_steps: int | None = None,
    step_fn: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    after_step: Callable[[int], None] | None = None,
    extra_metrics: Callable[[], dict[str, float]] | None = None,
) -> tuple[float, dict[str, float]]:
    """Train ``epochs`` epochs (stopping after ``max_steps`` optimizer steps), reporting after each.

    ``step_fn(x, y)`` does a step's forward and backward passes (default: cross-entropy of
    ``model``); ``after_step(step)`` runs after every optimizer step (pruning, snapshots). Returns
    the training wall time and the last epoch's metrics.
    """
    step_fn = step_fn or cross_entropy_step(model)
    device = model_device(model)  # batches of data left in host memory go over one at a time
    batch_size = spec.training.batch_size
    shuffle = torch.Generator().manual_seed(seed)
    step, train_time, last = 0, 0.0, {}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum, seen = 0.0, 0
        for batch in torch.randperm(len(data.x_train), generator=shuffle).split(batch_size):
            if max_steps is not None and step >= max_steps:
                break
            step += 1
            optimizer.zero_grad(set_to_none=True)
            loss_sum += step_fn(data.x_train[batch].to(device), data.y_train[batch].to(device)) * len(batch)
            seen += len(batch)
            optimizer.step()
            if after_step is not None:
                after_step(step)
        last = epoch_metrics(model, data, loss_sum / max(seen, 1))
        if extra_metrics is not None:
            last.update(extra_metrics())
        last["epoch_time_s"] = time.perf_counter() - start
        train_time += last["epoch_time_s"]
        report(epoch, last)
        if max_steps is not None and step >= max_steps:
            break
    return train_time, last


def build_space(spec: JobSpec) -> Any:
    """The job's search space."""
    return registry.search_spaces.create(spec.search_space.name, spec.search_space.params)


def encode_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """Tensors as a base64 safetensors string, to ride in a saved model's string metadata."""
    return base64.b64encode(safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()})).decode("ascii")


def decode_tensors(text: str) -> dict[str, torch.Tensor]:
    """The inverse of :func:`encode_tensors`."""
    return safetensors.torch.load(base64.b64decode(text.encode("ascii")))


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))

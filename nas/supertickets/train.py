"""The training loop and trial ending shared by the ticket strategies' ``run_trial`` overrides.

They train as :func:`nas.training.run_trial` does (same optimizer settings, per-epoch report,
final metrics, latency of the sparse inference model, layer report, safetensors model) but own
the loop, because a supernet step runs several sub-networks and a lottery round starts from its
parent's masks and rewind weights.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from nas import registry
from nas.arch import fingerprint
from nas.latency import measure
from nas.sparse.inference import to_inference
from nas.sparse.serialization import save_model
from nas.sparse.stats import layer_report, model_stats, weight_densities, weight_sparsity
from nas.specs import JobSpec
from nas.training import TrialOutcome, _optimizer, evaluate, load_dataset

Report = Callable[[int, dict[str, float]], None]


@dataclass
class Data:
    """A dataset's splits as tensors (shared with the process-wide cache: never modify them)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.x_train) / batch_size)


def load_data(spec: JobSpec, data_dir: Path) -> Data:
    """The job's dataset as tensors."""
    splits = load_dataset(spec.dataset.name, spec.dataset.params, data_dir)
    return Data(
        torch.from_numpy(splits.x_train),
        torch.from_numpy(splits.y_train),
        torch.from_numpy(splits.x_test),
        torch.from_numpy(splits.y_test),
        tuple(splits.input_shape),
        splits.num_classes,
    )


def trial_seed(spec: JobSpec, key: Any) -> int:
    """A seed per (job seed, key): equal trials reproduce, different ones differ."""
    return int(fingerprint({"seed": spec.seed, "arch": key})[:8], 16)


def optimizer_for(model: nn.Module, spec: JobSpec) -> torch.optim.Optimizer:
    """The job's optimizer (``training.optimizer``, ``lr``, ``weight_decay``, ``momentum``) over ``model``."""
    return _optimizer(model, spec.training)


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
            loss_sum += step_fn(data.x_train[batch], data.y_train[batch]) * len(batch)
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


def epoch_metrics(model: nn.Module, data: Data, train_loss: float) -> dict[str, float]:
    """What every epoch reports: losses, test accuracy, sparsity and each prunable weight's density."""
    test_loss, accuracy = evaluate(model, data.x_test, data.y_test)
    return {
        "train_loss": train_loss,
        "loss": test_loss,
        "accuracy": accuracy,
        "sparsity": weight_sparsity(model),
        **{f"density:{name}": density for name, density in weight_densities(model).items()},
    }


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int, batches: int, seed: int) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches, weights untouched.

    A sub-network cut from a supernet inherits statistics accumulated by many sub-networks;
    Once-for-All recalibrates them before evaluating it. Leaves ``model`` in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches == 0:
        model.eval()
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the calibration batches
    model.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for batch in order.split(batch_size)[:batches]:
        model(x[batch])
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.eval()


def finish(
    model: nn.Module,
    spec: JobSpec,
    data: Data,
    arch: dict[str, Any],
    train_time: float,
    *,
    extra_metadata: dict[str, str] | None = None,
    outputs: dict[str, Any] | None = None,
) -> TrialOutcome:
    """The trial's :class:`~nas.training.TrialOutcome`: final metrics, measured latency, layers and model.

    ``arch`` is the search-space architecture the saved model rebuilds from (``load_trained_model``).
    """
    model.eval()
    test_loss, accuracy = evaluate(model, data.x_test, data.y_test)
    inference, decisions = to_inference(model, data.input_shape, batch_size=1, target=spec.target)
    kernels = {decision["name"]: decision["kernel"] for decision in decisions}
    latency = measure(inference, data.input_shape, target=spec.target, batch_size=1)
    dense_latency = measure(model, data.input_shape, target=spec.target, batch_size=1)
    metrics = {
        **model_stats(model, data.input_shape),
        "accuracy": accuracy,
        "loss": test_loss,
        "latency_ms": latency["median_ms"],
        "latency_iqr_ms": latency["iqr_ms"],
        "masked_latency_ms": dense_latency["median_ms"],
        "train_time_s": train_time,
    }
    layers = [{**layer, "kernel": kernels.get(layer["name"])} for layer in layer_report(model)]
    metadata = {
        "search_space": spec.search_space.name,
        "search_space_params": json.dumps(spec.search_space.params, sort_keys=True),
        "arch": json.dumps(arch, sort_keys=True),
        "dataset": spec.dataset.name,
        "input_shape": json.dumps(list(data.input_shape)),
        "num_classes": str(data.num_classes),
        **(extra_metadata or {}),
    }
    return TrialOutcome(metrics=metrics, layers=layers, model_bytes=save_model(model, metadata), outputs=outputs or {})


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

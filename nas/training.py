"""One trial on a worker: train an architecture under a sparsifier, then measure and serialise it."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from nas import registry
from nas.arch import fingerprint
from nas.data import DataSplits
from nas.latency import measure, refine
from nas.sparse.inference import to_inference
from nas.sparse.serialization import load_model, read_metadata, save_model
from nas.sparse.stats import layer_report, model_stats, weight_densities, weight_sparsity
from nas.specs import JobSpec, TrainingSpec

_EVAL_BATCH = 1024
log = logging.getLogger(__name__)


@dataclass
class TrialOutcome:
    """What a finished trial hands back: final metrics, per-layer sparsity and the trained model."""

    metrics: dict[str, float]
    layers: list[dict[str, Any]]
    model_bytes: bytes
    outputs: dict[str, Any] = field(default_factory=dict)  # strategy-specific, stored as Trial.outputs


def run_trial(
    spec: JobSpec,
    arch: dict[str, Any],
    data_dir: Path,
    report: Callable[[int, dict[str, float]], None],
    layer_sparsity: dict[str, float] | None = None,
) -> TrialOutcome:
    """Train ``arch`` as ``spec`` says, calling ``report(epoch, metrics)`` after every (1-based) epoch.

    ``metrics`` are ``train_loss``, ``loss`` and ``accuracy`` on the test split, ``sparsity``,
    ``epoch_time_s`` (training plus evaluation), ``density:<weight name>`` for every prunable
    weight and the sparsifier's ``epoch_metrics``. ``layer_sparsity`` (weight name -> sparsity)
    replaces the space's per-layer targets, e.g. for a control trial at another trial's densities.
    An exception raised by ``report`` (early
    stopping, cancellation) stops the trial. Torch's thread count is left to the caller, and the
    result is deterministic for a given spec seed and architecture when torch runs single-threaded.
    """
    data = load_dataset(spec.dataset.name, spec.dataset.params, data_dir)
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    sparsifier = registry.sparsifiers.create(spec.sparsifier.name, spec.sparsifier.params)

    # One seed per (job seed, architecture): equal trials reproduce, different ones differ.
    seed = int(fingerprint({"seed": spec.seed, "arch": arch})[:8], 16)
    torch.manual_seed(seed)
    model = space.build(arch, data.input_shape, data.num_classes)
    optimizer = _optimizer(model, spec.training)  # before attach, so sparsifiers can reset its state
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    batch_size, epochs = spec.training.batch_size, spec.training.epochs
    total_steps = epochs * math.ceil(len(x_train) / batch_size)
    if hasattr(space, "layer_patterns"):
        sparsifier.layer_patterns = space.layer_patterns(arch)
    sparsifier.attach(model, optimizer, total_steps, layer_sparsity or space.layer_sparsity(arch))

    shuffle = torch.Generator().manual_seed(seed)
    step, train_time = 0, 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum = 0.0
        for batch in torch.randperm(len(x_train), generator=shuffle).split(batch_size):
            step += 1
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            sparsifier.on_after_backward(model, step)
            optimizer.step()
            sparsifier.on_step(model, step)
            loss_sum += loss.item() * len(batch)
        sparsifier.on_epoch_end(model, epoch)
        if epoch == epochs:
            sparsifier.finalize(model)  # before the last evaluation, so the final metrics are of the final masks
        test_loss, accuracy = evaluate(model, x_test, y_test)
        epoch_time = time.perf_counter() - start
        train_time += epoch_time
        report(
            epoch,
            {
                "train_loss": loss_sum / len(x_train),
                "loss": test_loss,
                "accuracy": accuracy,
                "sparsity": weight_sparsity(model),
                "epoch_time_s": epoch_time,
                **{f"density:{name}": density for name, density in weight_densities(model).items()},
                **sparsifier.epoch_metrics(model),
            },
        )

    # Latency is that of the sparse inference model (CSR or shrunk layers where they measure
    # faster), which computes the same function as the trained masked model. On a shared machine
    # the 10th percentile of per-call times repeats far better than the median (BENCHMARKS.md),
    # so it is the trial's latency, and what the predictor learns from.
    inference, decisions = to_inference(model, data.input_shape, batch_size=1, target=spec.target)
    kernels = {decision["name"]: decision["kernel"] for decision in decisions}
    latency = measure(inference, data.input_shape, target=spec.target, batch_size=1)
    dense_latency = measure(model, data.input_shape, target=spec.target, batch_size=1)
    _refine_predictor(inference, data.input_shape, spec.target, latency["p10_ms"])
    metrics = {
        **model_stats(model, data.input_shape),
        "accuracy": accuracy,
        "loss": test_loss,
        "latency_ms": latency["p10_ms"],
        "latency_median_ms": latency["median_ms"],
        "latency_iqr_ms": latency["iqr_ms"],
        "masked_latency_ms": dense_latency["p10_ms"],
        "train_time_s": train_time,
    }
    layers = [{**layer, "kernel": kernels.get(layer["name"])} for layer in layer_report(model, sparsifier)]
    metadata = {
        "search_space": spec.search_space.name,
        "search_space_params": json.dumps(spec.search_space.params, sort_keys=True),
        "arch": json.dumps(arch, sort_keys=True),
        "dataset": spec.dataset.name,
        "input_shape": json.dumps(list(data.input_shape)),
        "num_classes": str(data.num_classes),
    }
    return TrialOutcome(metrics=metrics, layers=layers, model_bytes=save_model(model, metadata))


def _refine_predictor(model: nn.Module, input_shape: tuple[int, ...], target: str, measured_ms: float) -> None:
    """Teach the latency predictor this measurement; a failure here never fails the trial."""
    try:
        refine(model, input_shape, target=target, measured_ms=measured_ms, batch_size=1)
    except Exception:
        log.warning("refining the latency predictor for %r failed", target, exc_info=True)


def load_trained_model(model_bytes: bytes) -> nn.Module:
    """Rebuild a trial's model, masks included, from its ``TrialOutcome.model_bytes`` alone."""
    meta = read_metadata(model_bytes)
    space = registry.search_spaces.create(meta["search_space"], json.loads(meta["search_space_params"]))
    model = space.build(json.loads(meta["arch"]), tuple(json.loads(meta["input_shape"])), int(meta["num_classes"]))
    load_model(model, model_bytes)
    return model.eval()


def load_dataset(name: str, params: dict[str, Any], data_dir: Path) -> DataSplits:
    """The named dataset's splits, cached per process: Ray reuses worker processes across trials.

    The cached arrays are shared between callers, who must not modify them.
    """
    return _load_dataset(name, json.dumps(params, sort_keys=True), str(data_dir))


@functools.lru_cache(maxsize=4)
def _load_dataset(name: str, params_json: str, data_dir: str) -> DataSplits:
    return registry.datasets.create(name, json.loads(params_json)).load(Path(data_dir))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad(), parametrize.cached():
        for xb, yb in zip(x.split(_EVAL_BATCH), y.split(_EVAL_BATCH)):
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def _optimizer(model: nn.Module, training: TrainingSpec) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), training.lr, training.weight_decay
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=training.momentum, weight_decay=wd)
    if training.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)

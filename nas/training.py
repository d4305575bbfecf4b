"""One trial on a worker: train an architecture under a sparsifier, then measure and serialise it.

:func:`end_trial` is the one way a trial ends, for every strategy that trains: it re-estimates the
BatchNorm statistics under the final masks, evaluates the trained model on the validation split,
reports the last epoch with that evaluation, evaluates it once on the test split, converts the
model to the sparse inference model, measures both, and returns the :class:`TrialOutcome` (metrics
as :mod:`nas.metrics` defines them, layer report, saved model). Epochs are evaluated on the
validation split only: the test split is seen once, by the final model, so nothing is ever chosen
on it. The helpers every trainer shares live here too: the dataset as tensors with its validation
split held out (:func:`load_data`), the device a trial trains on and its data there
(:func:`trial_device`, :func:`on_device`), mixed precision (:class:`Precision`), the trial seed,
the weight optimizer and the BatchNorm recalibration.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from nas import registry
from nas.arch import fingerprint
from nas.data import DataSplits, validation_split
from nas.data.tabular import TabularDataset
from nas.export import export_onnx
from nas.latency import UnsupportedLayer, measure, observe
from nas.sparse.base import Sparsifier
from nas.sparse.inference import to_inference
from nas.sparse.masks import prunable_weights
from nas.sparse.serialization import load_model, read_metadata, save_model
from nas.sparse.stats import layer_report, model_stats, weight_densities, weight_sparsity
from nas.specs import JobSpec, TrainingSpec
from nas.timing.targets import all_targets

_EVAL_BATCH = 1024
CALIBRATION_BATCHES = 20
"""Training batches (of the job's ``training.batch_size``) that re-estimate BatchNorm statistics at a
trial's end. Once-for-All and SuperTickets recalibrate on a couple of thousand images; 20 batches of
the default 128 are 2,560, enough for stable means and variances and cheap next to an epoch. A fixed
constant, not a job setting: no job gains from fewer, and more only costs time."""

Report = Callable[[int, dict[str, float]], None]
log = logging.getLogger(__name__)


@dataclass
class TrialOutcome:
    """What a finished trial hands back: final metrics, per-layer sparsity, the trained model and
    the latency observation that refines the predictor where the service keeps it (the runner)."""

    metrics: dict[str, float]
    layers: list[dict[str, Any]]
    model_bytes: bytes | None  # None: no model was trained (a trial looked up in a tabular benchmark)
    outputs: dict[str, Any] = field(default_factory=dict)  # strategy-specific, stored as Trial.outputs
    latency_observation: dict[str, Any] | None = None  # nas.latency.observe's record; None if it failed
    onnx_bytes: bytes | None = None  # the inference model as ONNX, for an agent target's agents to time
    # the last epoch (number, metrics) when it travels with the outcome instead of in a report of its
    # own (a looked-up trial's): the runner records both in one store transaction
    last_epoch: tuple[int, dict[str, float]] | None = None


def run_trial(
    spec: JobSpec,
    arch: dict[str, Any],
    data_dir: Path,
    report: Report,
    layer_sparsity: dict[str, float] | None = None,
) -> TrialOutcome:
    """Train ``arch`` as ``spec`` says, calling ``report(epoch, metrics)`` after every (1-based) epoch.

    ``metrics`` are ``train_loss``, ``val_loss`` and ``val_accuracy`` on the validation split, ``sparsity``,
    ``epoch_time_s`` (training plus evaluation), ``density:<weight name>`` for every prunable
    weight and the sparsifier's ``epoch_metrics``. ``layer_sparsity`` (weight name -> sparsity)
    replaces the space's per-layer targets, e.g. for a control trial at another trial's densities.
    The last epoch is reported by :func:`end_trial`, with the
    final evaluation (BatchNorm recalibrated). An exception raised by ``report`` (early
    stopping, cancellation) stops the trial. Torch's thread count is left to the caller, and the
    result is deterministic for a given spec seed and architecture when torch runs single-threaded.
    The trial trains on :func:`trial_device`, under :class:`Precision` (``training.mixed_precision``).
    """
    dataset = registry.datasets.create(spec.dataset.name, spec.dataset.params)
    if isinstance(dataset, TabularDataset):
        return look_up_trial(dataset, spec, arch, report)
    device = trial_device()
    data = on_device(load_data(spec, data_dir), device)
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    sparsifier = registry.sparsifiers.create(spec.sparsifier.name, spec.sparsifier.params)

    seed = trial_seed(spec, arch)
    torch.manual_seed(seed)
    model = space.build(arch, data.input_shape, data.num_classes).to(device)  # on the CPU: the model itself
    optimizer = weight_optimizer(model.parameters(), spec.training)  # before attach: sparsifiers may reset its state
    precision = Precision(spec.training.mixed_precision, device)
    x_train, y_train = data.x_train, data.y_train
    batch_size, epochs = spec.training.batch_size, spec.training.epochs
    total_steps = epochs * data.steps_per_epoch(batch_size)
    sparsifier.layer_patterns = space.layer_patterns(arch)
    sparsifier.attach(model, optimizer, total_steps, layer_sparsity or space.layer_sparsity(arch))

    shuffle = torch.Generator().manual_seed(seed)
    step, train_time = 0, 0.0
    last = LastEpoch(report, epochs)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum = 0.0
        for batch in torch.randperm(len(x_train), generator=shuffle).split(batch_size):
            step += 1
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = F.cross_entropy(model(x_train[batch].to(device)), y_train[batch].to(device))
            precision.backward(loss, optimizer)
            sparsifier.on_after_backward(model, step)
            precision.step(optimizer)
            sparsifier.on_step(model, step)
            loss_sum += loss.item() * len(batch)
        sparsifier.on_epoch_end(model, epoch)
        if epoch == epochs:
            sparsifier.finalize(model)  # the masks are final; end_trial recalibrates and evaluates
            metrics = {"train_loss": loss_sum / len(x_train)}
        else:
            metrics = epoch_metrics(model, data, loss_sum / len(x_train))
        metrics["epoch_time_s"] = epoch_time = time.perf_counter() - start
        train_time += epoch_time
        last(epoch, {**metrics, **sparsifier.epoch_metrics(model)})
    return end_trial(model, spec, data, arch, train_time, sparsifier=sparsifier, last_epoch=last)


def look_up_trial(dataset: TabularDataset, spec: JobSpec, arch: dict[str, Any], report: Report) -> TrialOutcome:
    """The trial of ``arch`` as the tabular ``dataset`` recorded it: its per-epoch curve (or, where the
    table has none, its last epoch) as a trained trial's epochs are, and its final metrics.

    Epochs before the last are reported as they would be in training (early stopping ranks on them);
    the last travels with the outcome, so a trial that costs nothing costs the service one report and
    one store write at its end. No model is trained, so none is saved; the latency is the table's.
    """
    entry = dataset.lookup(arch, trial_seed(spec, arch))
    curve = entry.curve or ({name: entry.metrics[name] for name in ("val_accuracy", "val_acc") if name in entry.metrics},)
    epoch_time = {"epoch_time_s": entry.train_time_s / entry.epochs}
    first = entry.epochs - len(curve) + 1
    for epoch, metrics in enumerate(curve[:-1], start=first):
        report(epoch, {**metrics, **epoch_time})
    return TrialOutcome(metrics=entry.metrics, layers=[], model_bytes=None, outputs={"looked_up": entry.outputs},
                        last_epoch=(entry.epochs, {**curve[-1], **epoch_time}))  # fmt: skip


class LastEpoch:
    """A trainer's per-epoch ``report``, holding back the last epoch (number ``last``) for :func:`end_trial`.

    Every earlier epoch is forwarded as it comes. The last one is sent by ``end_trial`` once the
    BatchNorm statistics are recalibrated, with the final evaluation in place of the trainer's, so a
    trial's last reported epoch and its final metrics are the same model's; a trainer may therefore
    skip evaluating its last epoch.
    """

    def __init__(self, report: Report, last: int) -> None:
        self._report, self.last = report, last
        self._held: tuple[int, dict[str, float]] | None = None

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch >= self.last:
            self._held = (epoch, metrics)
        else:
            self._report(epoch, metrics)

    def release(self, evaluation: dict[str, float], seconds: float) -> None:
        """Report the held epoch with ``evaluation`` over the trainer's, ``seconds`` added to its time."""
        if self._held is None:
            return
        epoch, metrics = self._held
        self._held = None
        time_s = metrics.get("epoch_time_s", 0.0) + seconds
        self._report(epoch, {**metrics, **evaluation, "epoch_time_s": time_s})


def end_trial(
    model: nn.Module,
    spec: JobSpec,
    data: Data,
    arch: dict[str, Any],
    train_time: float,
    *,
    sparsifier: Sparsifier | None = None,
    last_epoch: LastEpoch | None = None,
    search_split: tuple[torch.Tensor, torch.Tensor] | None = None,
    extra_metadata: dict[str, str] | None = None,
    outputs: dict[str, Any] | None = None,
) -> TrialOutcome:
    """The trial's :class:`TrialOutcome` from its trained model; every strategy's trials end here.

    ``model``'s masks must be final (the sparsifier's ``finalize`` ran). Its BatchNorm statistics
    are then re-estimated here on :data:`CALIBRATION_BATCHES` training batches, no weight updated
    (pruning moved every activation under the running averages, and a network pruned without it
    loses accuracy for nothing), and it is evaluated on the validation split (``val_accuracy``,
    ``val_loss``: what selection ranks on) and on ``search_split`` (``search_val_accuracy``, where the
    strategy trained its architecture on a part of the training data, as DASS trains α);
    ``last_epoch`` reports the held last epoch with that evaluation. Then, once, on the test split
    (``accuracy`` and ``loss``, also recorded as ``test_accuracy`` and ``test_loss``). These run on
    the device the model is on (a GPU trial's); the model then moves to the CPU (in place), is
    converted to the sparse inference model (CSR or shrunk layers where they measure faster;
    the same function), and both are measured: the latency
    metrics are those :mod:`nas.metrics` defines (``latency_ms`` is the per-call 10th percentile of
    the inference model). ``arch`` is the search-space architecture the saved model rebuilds from
    (:func:`load_trained_model`); ``extra_metadata`` (strings in the saved model) and ``outputs``
    (``Trial.outputs``) are the strategy's own; ``outputs["split"]`` records the split sizes and seed.
    """
    start = time.perf_counter()
    recalibrate_batchnorm(model, data.x_train, spec.training.batch_size, CALIBRATION_BATCHES, trial_seed(spec, arch))
    model.eval()
    val_loss, val_accuracy = evaluate(model, data.x_val, data.y_val)
    evaluation = {"val_loss": val_loss, "val_accuracy": val_accuracy, "sparsity": weight_sparsity(model)}
    if search_split is not None:
        evaluation["search_val_accuracy"] = evaluate(model, *search_split)[1]
    evaluation.update({f"density:{name}": density for name, density in weight_densities(model).items()})
    seconds = time.perf_counter() - start
    train_time += seconds
    if last_epoch is not None:
        last_epoch.release(evaluation, seconds)
    test_loss, accuracy = evaluate(model, data.x_test, data.y_test)  # after the last report: never selected on
    if model_device(model).type != "cpu":  # conversion, latency on the job's target and the saved model start there
        model.cpu()  # (a no-op move is not free: an LSTM re-reads its parametrized weights into plain attributes)
    on_agent = spec.target not in all_targets()  # timed on the user's device by its agents, not here
    if on_agent:  # CSR or not is the agent's choice, on its own device: here only shrinking
        inference, decisions = to_inference(model, data.input_shape, kernels=dict.fromkeys(prunable_weights(model), "dense"))
    else:
        inference, decisions = to_inference(model, data.input_shape, batch_size=1, target=spec.target)
    kernels = {decision["name"]: decision["kernel"] for decision in decisions}
    metrics = {
        **model_stats(model, data.input_shape),
        "accuracy": accuracy,
        "loss": test_loss,
        "test_accuracy": accuracy,
        "test_loss": test_loss,
        **{k: v for k, v in evaluation.items() if k in ("val_accuracy", "val_loss", "search_val_accuracy")},
        "train_time_s": train_time,
    }
    observation = None
    if not on_agent:
        latency = measure(inference, data.input_shape, target=spec.target, batch_size=1)
        masked_latency = measure(model, data.input_shape, target=spec.target, batch_size=1)
        observation = _latency_observation(inference, data.input_shape, spec.target, latency["p10_ms"])
        metrics.update({
            "latency_ms": latency["p10_ms"], "latency_median_ms": latency["median_ms"],
            "latency_iqr_ms": latency["iqr_ms"], "masked_latency_ms": masked_latency["p10_ms"],
        })  # fmt: skip
    layers = [{**layer, "kernel": kernels.get(layer["name"])} for layer in layer_report(model, sparsifier)]
    metadata = {
        "search_space": spec.search_space.name,
        "search_space_params": json.dumps(spec.search_space.params, sort_keys=True),
        "arch": json.dumps(arch, sort_keys=True),
        "dataset": spec.dataset.name,
        "input_shape": json.dumps(list(data.input_shape)),
        "num_classes": str(data.num_classes),
        **(extra_metadata or {}),
    }
    outputs = {**(outputs or {}), "split": data.split}
    model_bytes = save_model(model, metadata)
    onnx = export_onnx(inference, data.input_shape, metadata) if on_agent else None
    return TrialOutcome(metrics, layers, model_bytes, outputs, observation, onnx)


def _latency_observation(
    model: nn.Module, input_shape: tuple[int, ...], target: str, measured_ms: float
) -> dict[str, Any] | None:
    """What the latency predictor learns from this measurement, kept by whoever receives the
    outcome (nothing is written here, on a worker); a failure here never fails the trial."""
    try:
        return observe(model, input_shape, target=target, measured_ms=measured_ms, batch_size=1)
    except UnsupportedLayer as exc:  # e.g. a DASS supernet, mixing operations by its own α: never predicted either
        log.info("the latency predictor learns nothing from this trial: %s", exc)
        return None
    except Exception:
        log.warning("observing the latency for the predictor on %r failed", target, exc_info=True)
        return None


def load_trained_model(model_bytes: bytes) -> nn.Module:
    """Rebuild a trial's model, masks included, from its ``TrialOutcome.model_bytes`` alone."""
    model = build_network(read_metadata(model_bytes))
    load_model(model, model_bytes)
    return model.eval()


def build_network(meta: dict[str, str]) -> nn.Module:
    """A freshly built network of the architecture a saved model's metadata names (its weights untrained)."""
    space = registry.search_spaces.create(meta["search_space"], json.loads(meta["search_space_params"]))
    return space.build(json.loads(meta["arch"]), tuple(json.loads(meta["input_shape"])), int(meta["num_classes"]))


def load_dataset(name: str, params: dict[str, Any], data_dir: Path) -> DataSplits:
    """The named dataset's train and test splits as it stores them (read again on every call:
    :func:`load_data` caches what trials use)."""
    return registry.datasets.create(name, params).load(data_dir)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    device = model_device(model)  # batches of data left in host memory go over one at a time
    loss_sum, correct = 0.0, 0
    with torch.no_grad(), parametrize.cached():
        for xb, yb in zip(x.split(_EVAL_BATCH), y.split(_EVAL_BATCH)):
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def epoch_metrics(model: nn.Module, data: Data, train_loss: float) -> dict[str, float]:
    """What every epoch reports: losses, validation accuracy, sparsity and each prunable weight's density.

    Never the test split: early stopping ranks on these, and the test split stays unseen until the trial ends.
    """
    val_loss, val_accuracy = evaluate(model, data.x_val, data.y_val)
    return {
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "sparsity": weight_sparsity(model),
        **{f"density:{name}": density for name, density in weight_densities(model).items()},
    }


@dataclass
class Data:
    """A dataset's splits as tensors (shared with the process-wide cache: never modify them).

    ``x_train`` holds the training examples that train; ``x_val`` those held out of the training
    data for selection (:func:`nas.data.validation_split`); ``x_test`` the dataset's test split.
    ``split`` records how: sizes, fraction, seed, and whether it was stratified.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    split: dict[str, Any] = field(default_factory=dict)

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.x_train) / batch_size)


def load_data(spec: JobSpec, data_dir: Path) -> Data:
    """The job's dataset as tensors, its validation split (``training.val_fraction``, ``val_seed``) held out.

    Cached per process (Ray reuses worker processes across trials); callers share the tensors and
    must not modify them. A stored dataset (``upload``) is cached by its id, which always names the
    same splits: a stored dataset never changes, and a deleted one's id is never given again.
    """
    training = spec.training
    return _load_data(
        spec.dataset.name, json.dumps(spec.dataset.params, sort_keys=True), str(data_dir),
        training.val_fraction, training.val_seed,
    )  # fmt: skip


@functools.lru_cache(maxsize=4)
def _load_data(name: str, params_json: str, data_dir: str, val_fraction: float, val_seed: int) -> Data:
    splits = load_dataset(name, json.loads(params_json), Path(data_dir))
    held = validation_split(splits.y_train, val_fraction, val_seed)
    return Data(
        torch.from_numpy(splits.x_train[held.train]),
        torch.from_numpy(splits.y_train[held.train]),
        torch.from_numpy(splits.x_train[held.val]),
        torch.from_numpy(splits.y_train[held.val]),
        torch.from_numpy(splits.x_test),
        torch.from_numpy(splits.y_test),
        tuple(splits.input_shape),
        splits.num_classes,
        {
            "train": len(held.train), "val": len(held.val), "test": len(splits.y_test),
            "val_fraction": val_fraction, "val_seed": val_seed, "stratified": held.stratified,
        },
    )  # fmt: skip


def trial_seed(spec: JobSpec, key: Any) -> int:
    """A seed per (job seed, key), ``key`` usually the trial's arch: equal trials reproduce, different ones differ."""
    return int(fingerprint({"seed": spec.seed, "arch": key})[:8], 16)


def weight_optimizer(params: Iterable[nn.Parameter], training: TrainingSpec) -> torch.optim.Optimizer:
    """The job's weight optimizer (``training.optimizer``, ``lr``, ``weight_decay``, ``momentum``) over ``params``."""
    lr, wd = training.lr, training.weight_decay
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=training.momentum, weight_decay=wd)
    if training.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


_DEVICE: contextvars.ContextVar[torch.device] = contextvars.ContextVar("trial_device", default=torch.device("cpu"))


def trial_device() -> torch.device:
    """The device the current trial trains on: the one its worker chose (:func:`training_on`), else the CPU.

    A Ray worker given a GPU (``resources.gpus``) trains its trial on it (:mod:`workers.trainable`);
    trials run anywhere else (tests, benchmarks, a worker without a GPU) train on the CPU.
    """
    return _DEVICE.get()


@contextlib.contextmanager
def training_on(device: torch.device) -> Iterator[None]:
    """Train the trials run inside this block on ``device``."""
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for one without any)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


DATA_ON_GPU_SHARE = 0.5
"""The largest share of a GPU's free memory a trial's dataset may take to be moved there whole, once,
leaving the rest to the model, its activations and the trials that share the GPU. A larger dataset
stays in host memory and goes over batch by batch."""


def on_device(data: Data, device: torch.device) -> Data:
    """``data`` with its splits on ``device`` where they fit (:data:`DATA_ON_GPU_SHARE`); else ``data`` itself,
    whose batches the trainer moves as it uses them. On the CPU: ``data`` itself, no copy."""
    if device.type == "cpu":
        return data
    names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    size = sum(getattr(data, name).nbytes for name in names)
    free, _ = torch.cuda.mem_get_info(device)
    if size > DATA_ON_GPU_SHARE * free:
        log.info("the dataset (%.0f MB) stays in host memory: %.0f MB of the GPU are free", size / 1e6, free / 1e6)
        return data
    return dataclasses.replace(data, **{name: getattr(data, name).to(device) for name in names})


class Precision:
    """A training step's passes: float16 under autocast with loss scaling where ``mixed_precision`` asks for
    it on a GPU; otherwise plain float32 calls, the same as without this class.

    Gradients are unscaled before anyone reads them (a sparsifier's ``on_after_backward``); a step
    whose gradients overflowed is skipped and the scale lowered, as ``torch.amp.GradScaler`` does.
    """

    def __init__(self, mixed_precision: bool, device: torch.device) -> None:
        self._scaler = torch.amp.GradScaler("cuda") if mixed_precision and device.type == "cuda" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context of a forward pass and its loss."""
        return contextlib.nullcontext() if self._scaler is None else torch.autocast("cuda", dtype=torch.float16)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self._scaler is None:
            loss.backward()
            return
        self._scaler.scale(loss).backward()
        self._scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._scaler is None:
            optimizer.step()
            return
        self._scaler.step(optimizer)
        self._scaler.update()


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, x: torch.Tensor, batch_size: int, batches: int | None = None, seed: int = 0
) -> None:
    """Re-estimate every BatchNorm's running statistics on training inputs ``x`` under the current masks.

    The running averages of a network just pruned (or cut from a supernet, whose statistics many
    sub-networks accumulated) do not match what its forward pass computes, and pruning to a few
    percent can leave a variance that has decayed towards zero, blowing evaluation up. Each
    statistic becomes the plain average over ``batches`` batches drawn by ``seed`` (Once-for-All's
    recalibration), or over every batch of ``x`` when ``batches`` is None. Weights stay untouched and
    the model keeps its train/eval mode. Random layers (dropout) draw from ``seed`` too, leaving the
    global generator as it was, so the same call gives the same statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches == 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    was_training = model.training
    model.train()
    if batches is None:
        chunks = x.split(batch_size)
    else:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        chunks = tuple(x[batch] for batch in order.split(batch_size)[:batches])
    device = model_device(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for xb in chunks:
            model(xb.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)

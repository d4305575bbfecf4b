"""Every metric a complete trial records: the one definition the trainer, the job spec, ``/catalog``,
the SDK, the CLI and the dashboard read.

Pure Python (pydantic only), so the light client can import it without torch or ray.

The latency decision, stated once: ``latency_ms`` is the 10th percentile of per-call times of the
trial's sparse inference model at batch 1 on the job's target. On a shared machine two
measurements of the same model agree far more often on the 10th percentile than on the median
(BENCHMARKS.md), and it is what the model costs without interference. Every complete trial of
every strategy records the same latency set: ``latency_ms``, ``latency_median_ms``,
``latency_iqr_ms`` and ``masked_latency_ms``.

Validation, then test: every dataset holds out a validation split of its training data
(:func:`nas.data.validation_split`). A job's objectives name ``accuracy`` and ``loss``, but
selection (strategies, early stopping, the Pareto front, the best trial) ranks them on their
validation twins, ``val_accuracy`` and ``val_loss`` (:func:`selection_metric`); the test split is
evaluated once per trial, at its end, and never ranked on, so the test numbers stay unbiased.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["maximize", "minimize", "none"]
Kind = Literal["integer", "float", "fraction"]
Split = Literal["val", "test"]


class Metric(BaseModel):
    """One trial metric: what it means, in which unit, which way is better, and how to show it."""

    model_config = ConfigDict(frozen=True)

    name: str
    label: str = Field(description="a short title for tables and charts")
    unit: str = Field(description="ms, s, weights, FLOPs, or empty for a ratio or a loss")
    description: str
    direction: Direction = Field(description="which way is better; none: neither")
    kind: Kind = Field(description="integer (a count), float, or fraction (0..1)")
    objective: bool = Field(description="a job's objectives may name it (every complete trial records it)")
    per_epoch: bool = Field(False, description="also reported after every epoch (early stopping may rank on it)")
    split: Split | None = Field(
        None, description="the data split it is measured on: val (selection ranks on it), test (reported, never "
                          "ranked on); null: no split (a count, a time, a latency)"
    )
    selected_on: str | None = Field(
        None, description="the metric selection ranks this objective on (its validation-split twin); null: itself"
    )


_ALL = (
    Metric(name="accuracy", label="Accuracy (test)", unit="", kind="fraction", direction="maximize", objective=True,
           split="test", selected_on="val_accuracy",
           description="test accuracy of the final model (0..1); selection ranks on val_accuracy"),
    Metric(name="loss", label="Loss (test)", unit="", kind="float", direction="minimize", objective=True, split="test",
           selected_on="val_loss", description="test cross-entropy of the final model; selection ranks on val_loss"),
    Metric(name="val_accuracy", label="Accuracy (val)", unit="", kind="fraction", direction="maximize",
           objective=False, per_epoch=True, split="val",
           description="accuracy on the validation split (held out of the training data), after every epoch and of "
                       "the final model: what selection ranks the accuracy objective on"),
    Metric(name="val_loss", label="Loss (val)", unit="", kind="float", direction="minimize", objective=False,
           per_epoch=True, split="val",
           description="cross-entropy on the validation split, after every epoch and of the final model: what "
                       "selection ranks the loss objective on"),
    Metric(name="test_accuracy", label="Test accuracy", unit="", kind="fraction", direction="maximize",
           objective=False, split="test",
           description="accuracy of the final model on the test split: the same as accuracy"),
    Metric(name="test_loss", label="Test loss", unit="", kind="float", direction="minimize", objective=False,
           split="test", description="cross-entropy of the final model on the test split: the same as loss"),
    Metric(name="val_acc", label="Val acc (table, %)", unit="%", kind="float", direction="maximize",
           objective=False, split="val",
           description="a tabular benchmark's validation accuracy in percent, as its table records it (nasbench201); "
                       "val_accuracy and accuracy hold it as a fraction"),
    Metric(name="search_val_accuracy", label="Search accuracy (α split)", unit="", kind="fraction",
           direction="maximize", objective=False,
           description="accuracy on the part of the training data that trained the architecture weights α (DASS "
                       "search trials)"),
    Metric(name="sparsity", label="Sparsity", unit="", kind="fraction", direction="maximize", objective=True,
           per_epoch=True, description="fraction of prunable weights that are zero"),
    Metric(name="nonzero_params", label="Nonzero params", unit="weights", kind="integer", direction="minimize",
           objective=True, description="parameters that are not zero"),
    Metric(name="params", label="Params", unit="weights", kind="integer", direction="minimize", objective=True,
           description="all parameters"),
    Metric(name="flops", label="FLOPs", unit="FLOPs", kind="integer", direction="minimize", objective=True,
           description="multiply-accumulates of one dense forward pass of one example, times two"),
    Metric(name="nonzero_flops", label="Nonzero FLOPs", unit="FLOPs", kind="integer", direction="minimize",
           objective=True, description="FLOPs that touch a nonzero weight"),
    Metric(name="latency_ms", label="Latency (measured)", unit="ms", kind="float", direction="minimize",
           objective=True,
           description="measured latency of the sparse inference model on the target at batch 1: the 10th percentile "
                       "of per-call times (it repeats better than the median on a shared machine)"),
    Metric(name="latency_median_ms", label="Latency (median)", unit="ms", kind="float", direction="minimize",
           objective=True, description="median of the same per-call times as latency_ms"),
    Metric(name="latency_iqr_ms", label="Latency IQR", unit="ms", kind="float", direction="none", objective=False,
           description="interquartile range of the same per-call times as latency_ms: how much they spread"),
    Metric(name="masked_latency_ms", label="Latency (masked, dense)", unit="ms", kind="float", direction="minimize",
           objective=True,
           description="10th percentile of per-call times of the trained masked model run dense (batch 1): what the "
                       "sparse inference model saves"),
    Metric(name="onnx_latency_ms", label="Latency (ONNX)", unit="ms", kind="float", direction="minimize",
           objective=False,
           description="10th percentile of per-call times of the trial's ONNX export in onnxruntime (CPU, one thread, "
                       "batch 1), measured when the model is first exported, on the exporting server; layers that run "
                       "as CSR in torch run dense in ONNX"),
    Metric(name="predicted_latency_ms", label="Latency (predicted)", unit="ms", kind="float", direction="minimize",
           objective=True, description="latency_ms as the latency predictor estimated it before training"),
    Metric(name="probed_latency_ms", label="Latency (before training)", unit="ms", kind="float",
           direction="minimize", objective=False,
           description="on an agent target: the untrained candidate's latency measured by an agent before training, "
                       "where the prediction was too close to constraints.max_latency_ms to decide on"),
    Metric(name="train_time_s", label="Train time", unit="s", kind="float", direction="minimize", objective=True,
           description="wall time of training"),
    Metric(name="dense_accuracy", label="Dense accuracy", unit="", kind="fraction", direction="none", objective=False,
           description="test accuracy of the given model before any pruning, measured once per job (spaces over a "
                       "given model, such as model_sparsity)"),
    Metric(name="accuracy_drop", label="Accuracy drop", unit="", kind="float", direction="minimize", objective=False,
           description="dense_accuracy minus accuracy, both on the test split: what making the given model sparse "
                       "cost (negative: it gained); shown, never ranked on"),
    Metric(name="dense_latency_ms", label="Dense latency", unit="ms", kind="float", direction="none", objective=False,
           description="latency of the given model before any pruning, timed as latency_ms is, once per job"),
    Metric(name="speedup", label="Speedup", unit="", kind="float", direction="maximize", objective=False,
           description="dense_latency_ms divided by latency_ms: how many times faster the sparse inference model runs"),
)

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
"""Every trial metric by name, in the order tables show them."""

OBJECTIVES: tuple[str, ...] = tuple(m.name for m in _ALL if m.objective)
"""Metrics a job's objectives may name."""

PER_EPOCH: tuple[str, ...] = tuple(m.name for m in _ALL if m.per_epoch)
"""Metrics the trainer reports after every epoch, which early stopping ranks on (never a test metric)."""


def selection_metric(objective: str) -> str:
    """The metric selection ranks ``objective`` on: ``accuracy`` -> ``val_accuracy``, ``loss`` -> ``val_loss``,
    any other objective itself. Strategies, early stopping, the Pareto front and the best trial all ask here."""
    metric = METRICS.get(objective)
    return metric.selected_on if metric is not None and metric.selected_on else objective


def selected_value(metrics: Mapping[str, float], objective: str) -> float | None:
    """``objective``'s value as selection ranks it: its :func:`selection_metric`; a trial recorded before
    validation splits existed has none and is ranked on ``objective`` itself. None when neither is there."""
    value = metrics.get(selection_metric(objective))
    return metrics.get(objective) if value is None else value


def objective_value(metrics: Mapping[str, float], objective: str) -> float | None:
    """What a strategy ranks a finished trial on for ``objective``: its :func:`selected_value`, with
    ``predicted_latency_ms`` standing in for a ``latency_ms`` never measured (an infeasible or pruned
    trial); None when missing or not finite."""
    value = selected_value(metrics, objective)
    if value is None and objective == "latency_ms":
        value = metrics.get("predicted_latency_ms")
    if value is None or not math.isfinite(value):
        return None
    return float(value)

LATENCY: tuple[str, ...] = ("latency_ms", "latency_median_ms", "latency_iqr_ms", "masked_latency_ms")
"""The latency set every complete trial of every strategy records."""


BASELINE: tuple[str, ...] = ("dense_accuracy", "dense_latency_ms")
"""What a job over a given model measures of it once (:mod:`workers.baseline`) and records on every trial."""


def beside_baseline(baseline: Mapping[str, float], metrics: Mapping[str, float]) -> dict[str, float]:
    """The job's ``baseline`` and, where ``metrics`` has what they compare, ``accuracy_drop`` and ``speedup``."""
    beside = dict(baseline)
    if "dense_accuracy" in baseline and "accuracy" in metrics:
        beside["accuracy_drop"] = baseline["dense_accuracy"] - metrics["accuracy"]
    if "dense_latency_ms" in baseline and metrics.get("latency_ms", 0.0) > 0.0:
        beside["speedup"] = baseline["dense_latency_ms"] / metrics["latency_ms"]
    return beside


def typed(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` with every integer metric as an ``int`` (JSON carries them as floats)."""
    return {
        name: int(value) if _is_integer(name) and math.isfinite(value) else value for name, value in metrics.items()
    }


def format_value(name: str, value: float | None) -> str:
    """``value`` as a table shows it: integers whole (17230, not 1.723e+04), other metrics to 4 digits."""
    if value is None:
        return "-"
    if _is_integer(name) and math.isfinite(value):
        return str(int(value))
    return f"{value:.4g}"


def _is_integer(name: str) -> bool:
    metric = METRICS.get(name)
    return metric is not None and metric.kind == "integer"

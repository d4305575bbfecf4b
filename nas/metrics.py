"""Every metric a complete trial records: the one definition the trainer, the job spec, ``/catalog``,
the SDK, the CLI and the dashboard read.

Pure Python (pydantic only), so the light client can import it without torch or ray.

The latency decision, stated once: ``latency_ms`` is the 10th percentile of per-call times of the
trial's sparse inference model at batch 1 on the job's target. On a shared machine two
measurements of the same model agree far more often on the 10th percentile than on the median
(BENCHMARKS.md), and it is what the model costs without interference. Every complete trial of
every strategy records the same latency set: ``latency_ms``, ``latency_median_ms``,
``latency_iqr_ms`` and ``masked_latency_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["maximize", "minimize", "none"]
Kind = Literal["integer", "float", "fraction"]


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


_ALL = (
    Metric(name="accuracy", label="Accuracy", unit="", kind="fraction", direction="maximize", objective=True,
           per_epoch=True, description="test accuracy of the final model (0..1)"),
    Metric(name="loss", label="Loss", unit="", kind="float", direction="minimize", objective=True, per_epoch=True,
           description="test cross-entropy of the final model"),
    Metric(name="val_accuracy", label="Validation accuracy", unit="", kind="fraction", direction="maximize",
           objective=False, description="accuracy on the held-out split that trained the architecture (DASS search trials)"),
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
    Metric(name="train_time_s", label="Train time", unit="s", kind="float", direction="minimize", objective=True,
           description="wall time of training"),
    Metric(name="dense_accuracy", label="Dense accuracy", unit="", kind="fraction", direction="none", objective=False,
           description="test accuracy of the given model before any pruning, measured once per job (spaces over a "
                       "given model, such as model_sparsity)"),
    Metric(name="accuracy_drop", label="Accuracy drop", unit="", kind="float", direction="minimize", objective=False,
           description="dense_accuracy minus accuracy: what making the given model sparse cost (negative: it gained)"),
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
"""Objective metrics the trainer also reports after every epoch."""

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

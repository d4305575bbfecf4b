"""Accuracy of the predictor on held-out models, beside the noise ceiling and two baselines.

From a calibration's measurements (``$NAS_HOME/latency/data/<key>.json``):

* **same distribution**: 5-fold cross-validation over the measured models (the whole-model
  correction is refitted without the fold; layer models never see whole models);
* **held-out families**: each model family predicted by a correction fitted on the others;
* **held-out sparsity**: layer models and correction fitted without anything sparser than 90%,
  tested on the 95% and 98% sparse models (extrapolation along the sparsity axis);

each as ±5% / ±10% accuracy, MAPE and Spearman's ρ, for all, dense and sparse models, beside
the **noise ceiling** (how often the model's two independent measurement sessions agree within
±10%) and the **FLOPs-only** (nonzero FLOPs) and **roofline-only** baselines fitted on the same
training models.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from nas.latency.calibrate import truth
from nas.latency.features import Layer, Trace
from nas.latency.predictor import Context, Correction, Predictor
from nas.latency.roofline import Baselines
from nas.timing.targets import TargetIdentity

SPARSITY_SPLIT = 0.075  # densities below this (95%, 98% sparse) are held out


def accuracy(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """±5% and ±10% accuracy, MAPE and Spearman's ρ of ``predicted`` against ``measured``."""
    p, y = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if len(y) == 0:
        return {"n": 0, "acc5": float("nan"), "acc10": float("nan"), "mape": float("nan"), "spearman": float("nan")}
    error = np.abs(p / y - 1)
    rho = float(spearmanr(p, y).statistic) if len(y) > 2 else float("nan")
    return {
        "n": int(len(y)),
        "acc5": float(np.mean(error <= 0.05)),
        "acc10": float(np.mean(error <= 0.10)),
        "mape": float(np.mean(error)),
        "spearman": rho,
    }


def noise_ceiling(records: Sequence[Mapping[str, Any]], statistic: str = "median_ms") -> dict[str, float]:
    """How often two independent measurement sessions of the same model agree within ±10% (and ±5%)."""
    if not records:
        return {"acc10": float("nan"), "acc5": float("nan")}
    a = np.array([r["sessions"][0][statistic] for r in records])
    b = np.array([r["sessions"][1][statistic] for r in records])
    error = np.abs(a / b - 1)
    return {"acc10": float(np.mean(error <= 0.10)), "acc5": float(np.mean(error <= 0.05))}


def _effective(trace: Trace) -> Trace:
    """The trace with every sparse layer in its CSR form: what nonzero-FLOPs and roofline baselines count."""
    layers = [layer.alt if layer.alt is not None else layer for layer in trace.layers]
    return Trace(layers, trace.container_calls, trace.input_elements, trace.peak_elements, trace.params)


def layer_samples(data: Mapping[str, Any], keep: Callable[[Mapping[str, Any]], bool] | None = None) -> list[tuple[Layer, float]]:
    """The calibration's layer samples timed alone (those ``keep`` accepts)."""
    return [(Layer.from_json(s["layer"]), float(s["ms"])) for s in data["layers"] if keep is None or keep(s)]


def context_samples(data: Mapping[str, Any], models: Sequence[int] | None = None) -> list[tuple[Layer, float, float]]:
    """Layers timed inside the random layer stacks (always) and inside the measured models (those whose
    index is in ``models``; all by default), as ``(layer, ms, the model's parameters)``."""
    records = data["models"]
    chains = [
        (Layer.from_json(x["layer"]), float(x["ms"]), float(chain["params"]))
        for chain in data.get("chains", [])
        for x in chain["in_context"]
    ]
    return chains + [
        (Layer.from_json(x["layer"]), float(x["ms"]), float(records[i]["trace"]["params"]))
        for i in (range(len(records)) if models is None else models)
        for x in records[i].get("in_context", [])
    ]


def layer_predictor(
    data: Mapping[str, Any],
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    models: Sequence[int] | None = None,
) -> Predictor:
    """Layer models fitted on the calibration's layer samples (those ``keep`` accepts), their in-model
    context on the layers of the measured models in ``models`` (all by default)."""
    target_id = TargetIdentity.from_dict(data["identity"])
    meta = data.get("meta", {})
    predictor = Predictor.fit_layers(target_id, layer_samples(data, keep), data["constants"],
                                     meta.get("runtime", "torch"))  # fmt: skip
    if meta.get("overhead_ms"):
        predictor.meta["overhead_ms"] = meta["overhead_ms"]
    predictor.fit_context(context_samples(data, models))
    return predictor


class _Split:
    """Layer-sum predictions of a set of models, with the correction refittable on any subset.

    Where the calibration timed layers inside the models, each fold's layer context is fitted on its
    training models only (``predictors`` caches the layer models, shared between splits)."""

    def __init__(
        self,
        data: Mapping[str, Any],
        records: Sequence[Mapping[str, Any]],
        statistic: str,
        kernels: str,
        keep: Callable[[Mapping[str, Any]], bool] | None = None,
        predictors: dict[Any, Predictor] | None = None,
    ) -> None:
        self.data = data
        self.keep = keep
        self.predictors = {} if predictors is None else predictors
        self.records = list(records)
        self.traces = [Trace.from_json(r["trace"]) for r in self.records]
        self.choices: Any = [r["kernels"] for r in self.records] if kernels == "converted" else "auto"
        self.y = np.array([truth(r, statistic) for r in self.records])
        self.effective = [_effective(t) for t in self.traces]
        self._sums: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def predictor(self, train: np.ndarray) -> Predictor:
        """Layer models for a fold: fitted on the layers timed alone, their context on the training models'."""
        if self.keep not in self.predictors:
            self.predictors[self.keep] = layer_predictor(self.data, self.keep, [])
        return self.predictors[self.keep].with_context(context_samples(self.data, [int(i) for i in train]))

    def sums(self, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per model: the summed layer times and the correction's features, from the fold's layer models."""
        key = tuple(sorted(int(i) for i in train))
        if key not in self._sums:
            raw = self.predictor(train).predict_traces(self.traces, self.choices, correction=Correction())
            features = np.array([Predictor.feature_vector(p.features) for p in raw]).reshape(len(raw), -1)
            self._sums[key] = (np.array([p.sum_ms for p in raw]), features)
        return self._sums[key]

    def predict(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        sum_ms, features = self.sums(train)
        correction = Correction.fit(features[train], np.log(self.y[train] / sum_ms[train]))
        return sum_ms[test] * np.exp(correction(features[test]))

    def baselines(self, train: np.ndarray, test: np.ndarray, constants: dict[str, float]) -> dict[str, np.ndarray]:
        fitted = Baselines(constants).fit([self.effective[i] for i in train], self.y[train])
        tests = [self.effective[i] for i in test]
        return {"flops": fitted.flops(tests), "roofline": fitted.roofline(tests)}


def _rows(name: str, split: _Split, test: np.ndarray, predicted: np.ndarray, baselines: dict[str, np.ndarray],
          statistic: str) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for subset, pick in (("all", lambda r: True), ("dense", lambda r: not r["sparse"]), ("sparse", lambda r: r["sparse"])):
        mask = np.array([pick(split.records[i]) for i in test], dtype=bool)
        if not mask.any():
            continue
        chosen = [split.records[i] for i in test[mask]]
        rows.append({
            "split": name, "models": subset, **accuracy(predicted[mask], split.y[test][mask]),
            "ceiling10": noise_ceiling(chosen, statistic)["acc10"], "ceiling5": noise_ceiling(chosen, statistic)["acc5"],
            "flops": accuracy(baselines["flops"][mask], split.y[test][mask]),
            "roofline": accuracy(baselines["roofline"][mask], split.y[test][mask]),
        })  # fmt: skip
    return rows


def _gather(split: _Split, folds: Sequence[tuple[np.ndarray, np.ndarray]], constants: dict[str, float]) -> tuple[
        np.ndarray, np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    tests, predictions, flops, roofline = [], [], [], []
    for train, test in folds:
        if len(train) < 3 or len(test) == 0:
            continue
        tests.append(test)
        predictions.append(split.predict(train, test))
        base = split.baselines(train, test, constants)
        flops.append(base["flops"])
        roofline.append(base["roofline"])
    return (np.concatenate(tests), np.concatenate(predictions),
            {"flops": np.concatenate(flops), "roofline": np.concatenate(roofline)})  # fmt: skip


def _cross_validation(records: Sequence[Mapping[str, Any]], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.arange(len(records))
    random.Random(seed).shuffle(order)
    chunks = np.array_split(order, folds)
    return [(np.concatenate([c for j, c in enumerate(chunks) if j != k]), chunk) for k, chunk in enumerate(chunks)]


def _by_family(records: Sequence[Mapping[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    families = sorted({r["family"] for r in records})
    return [(np.array([i for i, r in enumerate(records) if r["family"] != f]),
             np.array([i for i, r in enumerate(records) if r["family"] == f])) for f in families]  # fmt: skip


def evaluate(data: Mapping[str, Any], statistic: str = "median_ms", folds: int = 5, seed: int = 0,
             bundled: Predictor | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every split's rows (see the module docstring)."""
    records = data["models"]
    constants = data["constants"]
    rows: list[dict[str, Any]] = []
    predictors: dict[Any, Predictor] = {}

    for kernels, label in (("auto", "same distribution"), ("converted", "same distribution, converter's kernels")):
        split = _Split(data, records, statistic, kernels, predictors=predictors)
        test, predicted, base = _gather(split, _cross_validation(records, folds, seed), constants)
        rows += _rows(label, split, test, predicted, base, statistic)

    split = _Split(data, records, statistic, "auto", predictors=predictors)
    test, predicted, base = _gather(split, _by_family(records), constants)
    rows += _rows("held-out families", split, test, predicted, base, statistic)

    def dense_enough(sample: Mapping[str, Any]) -> bool:
        return float(sample["layer"]["x"].get("density", 1.0)) >= SPARSITY_SPLIT

    split = _Split(data, records, statistic, "auto", keep=dense_enough, predictors=predictors)
    held = np.array([i for i, r in enumerate(records) if r["min_density"] < SPARSITY_SPLIT], dtype=int)
    kept = np.array([i for i, r in enumerate(records) if r["min_density"] >= SPARSITY_SPLIT], dtype=int)
    if len(held) and len(kept) >= 3:
        test, predicted, base = _gather(split, [(kept, held)], constants)
        rows += _rows("held-out sparsity (95-98%)", split, test, predicted, base, statistic)

    if bundled is not None:
        traces = [Trace.from_json(r["trace"]) for r in records]
        scale = data["reference_ms"] / bundled.reference_ms if bundled.reference_ms and data["reference_ms"] else 1.0
        predicted = np.array([p.latency_ms for p in bundled.predict_traces(traces, "auto", scale)])
        split = _Split(data, records, statistic, "auto", predictors=predictors)
        everything = np.arange(len(records))
        base = split.baselines(everything, everything, constants)
        rows += _rows("bundled predictor, rescaled (no fitting)", split, everything, predicted, base, statistic)
    return rows


def accuracy_summary(data: Mapping[str, Any], statistic: str = "p10_ms", folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """The numbers a target shows for its predictor: within ±10% and Spearman's ρ over the measured models
    (``folds``-fold cross-validation), the noise ceiling of the same models (their two sessions within
    ±10% of each other), within ±10% and ρ on held-out families, and ``error_p90``: the 90th
    percentile of the relative error over the cross-validated models."""
    records = data["models"]
    if len(records) < 2 * folds:
        return {"models": len(records)}
    split = _Split(data, records, statistic, "auto")
    out: dict[str, Any] = {"models": len(records)}
    for name, splits in (("", _cross_validation(records, folds, seed)), ("held_out_families_", _by_family(records))):
        test = np.concatenate([t for _, t in splits])
        predicted = np.concatenate([split.predict(train, t) for train, t in splits])
        result = accuracy(predicted, split.y[test])
        out |= {f"{name}within_10": result["acc10"], f"{name}spearman": result["spearman"],
                f"{name}mape": result["mape"]}  # fmt: skip
        if not name:  # the band a planner trusts a prediction to: 90% of held-out models were closer
            out["error_p90"] = float(np.percentile(np.abs(predicted / split.y[test] - 1.0), 90))
    out["noise_ceiling_within_10"] = noise_ceiling(records, statistic)["acc10"]
    return out


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def _rho(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| split | models | n | ±5% | ±10% | MAPE | Spearman ρ | noise ceiling ±10% | FLOPs-only ±10% / ρ | roofline-only ±10% / ρ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['split']} | {r['models']} | {r['n']} | {_pct(r['acc5'])} | {_pct(r['acc10'])} | {_pct(r['mape'])} | "
            f"{_rho(r['spearman'])} | {_pct(r['ceiling10'])} | {_pct(r['flops']['acc10'])} / {_rho(r['flops']['spearman'])} | "
            f"{_pct(r['roofline']['acc10'])} / {_rho(r['roofline']['spearman'])} |"
        )
    return "\n".join(lines)


def layer_accuracy(data: Mapping[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Per layer kind: accuracy of the layer models on a held-out fifth of the layer samples timed alone,
    and on the layers of a held-out fifth of the models timed inside them (context fitted on the rest)."""
    samples = layer_samples(data)
    random.Random(seed).shuffle(samples)
    cut = len(samples) // 5
    test, train = samples[:cut], samples[cut:]
    target_id = TargetIdentity.from_dict(data["identity"])
    predictor = Predictor.fit_layers(target_id, train, data["constants"], data.get("meta", {}).get("runtime", "torch"))
    rows = []
    for kind in sorted({layer.kind for layer, _ in test}):
        chosen = [(layer, ms) for layer, ms in test if layer.kind == kind]
        predicted = predictor.layer_times([layer for layer, _ in chosen])
        rows.append({"kind": kind, "context": "alone", **accuracy(predicted, [ms for _, ms in chosen])})
    order = list(range(len(data["models"])))
    random.Random(seed).shuffle(order)
    held = order[: len(order) // 5]
    tests = context_samples({**data, "chains": []}, held)  # the random stacks' layers always train
    if not tests:
        return rows
    inside = layer_predictor(data, models=order[len(order) // 5 :])
    for kind in sorted({layer.kind for layer, _, _ in tests}):
        chosen = [(layer, ms, p) for layer, ms, p in tests if layer.kind == kind]
        layers = [layer for layer, _, _ in chosen]
        predicted = inside.layer_times(layers) * np.exp(inside.context(Context.design(layers, [p for _, _, p in chosen])))
        rows.append({"kind": kind, "context": "in a model", **accuracy(predicted, [ms for _, ms, _ in chosen])})
    return rows


def summary_line(rows: Sequence[Mapping[str, Any]]) -> str:
    main = next((r for r in rows if r["split"] == "same distribution" and r["models"] == "all"), None)
    if main is None:
        return ""
    return (f"same distribution: {_pct(main['acc10'])} within ±10% (ceiling {_pct(main['ceiling10'])}), "
            f"ρ {_rho(main['spearman'])}, MAPE {_pct(main['mape'])}")  # fmt: skip


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")

"""The latency predictor: per-layer-kind models, their in-model context and a whole-model correction, as JSON.

Per layer kind (``features.KINDS``) the time of a layer alone is ``base(x) * exp(trees(x))``:

* ``base`` is an analytic cost, ``c0 + c1 * MFLOPs + c2 * MB moved (+ c3 * rows or steps)``,
  fitted by non-negative least squares on relative error;
* ``trees`` are LightGBM gradient-boosted trees on ``log(measured / base)``, the ratio to the
  analytic cost (cache effects, kernel choices inside oneDNN/MKL, the CSR product's switch to
  ``embedding_bag``), started from zero. Trees are flat outside the data they saw, so a ratio
  carries over to a layer larger than any calibrated one where an absolute log time would not.

Inside a model a layer runs slower than alone; :class:`Context` (a ridge regression on physical
inputs, fitted on layers timed inside the calibration models) scales each layer to its in-model
time. A model's time is the sum over its layers (for a sparse layer, the faster of its dense and
CSR forms, as the inference converter picks; under ONNX Runtime always dense, with the layers it
fuses into a convolution free, plus the session's fixed cost) times ``exp(correction)``, a ridge
regression on a few model-level features (the summed time, module and functional call counts,
peak activation, parameters) for the glue between layers. The ridge is cheap to refit, which is
how measured latencies of finished trials refine the predictor online.

Everything is JSON: LightGBM's own text format inside, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls

from nas.latency.features import CATEGORICAL, KINDS, OPS, Layer, Trace
from nas.latency.roofline import DEFAULT_CONSTANTS, roofline_seconds
from nas.timing.targets import TargetIdentity

FORMAT = "nas-latency-predictor"
FORMAT_VERSION = 2  # 2: the in-model context of layers, runtime and fixed overhead
CSR_MARGIN = 0.95  # nas.sparse.inference keeps CSR only if at least 5% faster than dense
_MIN_MS = 1e-4
_MIN_TREE_ROWS = 24
_LGB_PARAMS = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 5,
    "lambda_l2": 3.0,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
    "verbose": -1,
    "seed": 0,
    "min_data_per_group": 3,  # op categories have few samples each
    "cat_smooth": 1.0,
    "cat_l2": 1.0,
}
_ROUNDS = 400
# Few and coarse on purpose: how the time splits between layer kinds fits the calibration families
# better but transfers worse to a family it has not seen (BENCHMARKS.md, held-out families).
CORRECTION_FEATURES = ("log_sum_ms", "log_module_calls", "log_functional_calls", "log_peak_elements", "log_params")
_RIDGE = 3.0


class NoPredictor(LookupError):
    """No stored or bundled predictor fits the requested target."""


def _base_design(kind: str, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """The base model's inputs: a constant, MFLOPs, MB moved and a per-kind overhead count."""
    design = np.ones((len(rows), 4))
    for i, x in enumerate(rows):
        design[i, 1] = x.get("flops", 0.0) / 1e6
        design[i, 2] = x.get("bytes", 0.0) / 1e6
        if kind in ("csr_linear", "csr_conv"):
            design[i, 3] = x.get("n", x.get("cout", 0.0)) / 1e3
        elif kind == "rnn":
            design[i, 3] = x["steps"] * x["layers"] * x["directions"] / 1e2
        else:
            design[i, 3] = 0.0
    return design


class KindModel:
    """Latency of one layer kind: a physical base times exp(boosted trees)."""

    def __init__(self, kind: str, coef: Sequence[float], booster_text: str | None = None, rows: int = 0) -> None:
        self.kind = kind
        self.features = KINDS[kind]
        self.coef = np.asarray(coef, dtype=float)
        self.booster_text = booster_text
        self.rows = rows
        self._booster: Any = None
        self._lock = threading.Lock()

    @classmethod
    def fit(cls, kind: str, rows: Sequence[Mapping[str, float]], latencies_ms: Sequence[float]) -> KindModel:
        y = np.asarray(latencies_ms, dtype=float)
        design = _base_design(kind, rows)
        scale = 1.0 / y
        coef, _ = nnls(design * scale[:, None], np.ones_like(y), maxiter=200)
        model = cls(kind, coef, None, len(rows))
        if len(rows) >= _MIN_TREE_ROWS:
            import lightgbm as lgb

            residual = np.log(y) - np.log(model._base(design))
            categorical = [i for i, name in enumerate(model.features) if name in CATEGORICAL]
            data = lgb.Dataset(
                model._matrix(rows), residual, feature_name=list(model.features),
                categorical_feature=categorical or "auto", free_raw_data=True,
            )  # fmt: skip
            params = {**_LGB_PARAMS, "min_data_in_leaf": max(5, min(20, len(rows) // 50))}
            cv = lgb.cv(
                params, data, num_boost_round=_ROUNDS, nfold=4, stratified=False, seed=0,
                callbacks=[lgb.early_stopping(25, verbose=False)],
            )  # fmt: skip
            rounds = max(10, len(next(iter(cv.values()))))  # as many trees as held-out folds liked
            booster = lgb.train(params, data, num_boost_round=rounds)
            model.booster_text = booster.model_to_string()
        return model

    def _matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        return np.array([[x.get(name, 0.0) for name in self.features] for x in rows], dtype=float)

    def _base(self, design: np.ndarray) -> np.ndarray:
        return np.maximum(design @ self.coef, _MIN_MS)

    def _trees(self) -> Any:
        if self._booster is None and self.booster_text is not None:
            import lightgbm as lgb

            with self._lock:
                if self._booster is None:
                    self._booster = lgb.Booster(model_str=self.booster_text)
        return self._booster

    def predict(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Milliseconds per row (rows carry ``roofline`` already)."""
        if not rows:
            return np.zeros(0)
        base = self._base(_base_design(self.kind, rows))
        booster = self._trees()
        if booster is None:
            return base
        with self._lock:  # one booster, many server threads
            residual = booster.predict(self._matrix(rows), num_threads=1)
        return base * np.exp(residual)

    def to_json(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "rows": self.rows, "lightgbm": self.booster_text}

    @classmethod
    def from_json(cls, kind: str, data: Mapping[str, Any]) -> KindModel:
        return cls(kind, data["coef"], data.get("lightgbm"), int(data.get("rows", 0)))


@dataclass
class Correction:
    """Ridge regression of ``log(measured / summed prediction)`` on model-level features."""

    mean: np.ndarray = field(default_factory=lambda: np.zeros(len(CORRECTION_FEATURES)))
    std: np.ndarray = field(default_factory=lambda: np.ones(len(CORRECTION_FEATURES)))
    coef: np.ndarray = field(default_factory=lambda: np.zeros(len(CORRECTION_FEATURES)))
    intercept: float = 0.0
    rows: int = 0

    @classmethod
    def fit(cls, features: np.ndarray, residuals: np.ndarray, weights: np.ndarray | None = None) -> Correction:
        if len(residuals) == 0:
            return cls()
        w = np.ones(len(residuals)) if weights is None else np.asarray(weights, dtype=float)
        mean = np.average(features, axis=0, weights=w)
        std = np.sqrt(np.average((features - mean) ** 2, axis=0, weights=w))
        std = np.where(std > 1e-9, std, 1.0)
        z = (features - mean) / std
        intercept = float(np.average(residuals, weights=w))
        target = residuals - intercept
        gram = (z * w[:, None]).T @ z + _RIDGE * len(residuals) ** 0.5 * np.eye(z.shape[1])
        coef = np.linalg.solve(gram, (z * w[:, None]).T @ target)
        return cls(mean, std, coef, intercept, len(residuals))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.intercept + ((features - self.mean) / self.std) @ self.coef

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(CORRECTION_FEATURES), "mean": self.mean.tolist(), "std": self.std.tolist(),
            "coef": self.coef.tolist(), "intercept": self.intercept, "rows": self.rows,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Correction:
        if list(data["features"]) != list(CORRECTION_FEATURES):
            raise ValueError("the stored correction was fitted on other model features; recalibrate")
        return cls(
            np.asarray(data["mean"]), np.asarray(data["std"]), np.asarray(data["coef"]), float(data["intercept"]),
            int(data.get("rows", 0)),
        )  # fmt: skip


_CONTEXT_RIDGE = 1.0


class Context:
    """How much slower a layer runs inside a model than alone: ``log(in model / alone)`` as a ridge
    regression on its kind, and per kind on log10 of the model's parameters (whether its weights are
    still in cache when the layer runs again) and of the layer's bytes moved, plus log10 FLOPs.

    Fitted on layers timed inside the calibration models (:func:`nas.latency.calibrate.time_with_context`)
    against the layer models' predictions for them alone. Few, physical inputs on purpose: boosted
    trees on the same samples fit the calibration families better and an unseen family worse.
    Without in-model samples (a calibration through a timer) it is zero.
    """

    def __init__(self, coef: Sequence[float] | None = None, rows: int = 0) -> None:
        self.coef = None if coef is None else np.asarray(coef, dtype=float)
        self.rows = rows

    @staticmethod
    def design(layers: Sequence[Layer], params: Sequence[float]) -> np.ndarray:
        kinds = list(KINDS)
        n = len(kinds)
        rows = np.zeros((len(layers), 3 * n + 2))
        for i, (layer, p) in enumerate(zip(layers, params)):
            j = kinds.index(layer.kind)
            rows[i, j] = 1.0
            rows[i, n + j] = math.log10(1.0 + p)
            rows[i, 2 * n + j] = math.log10(1.0 + layer.x.get("bytes", 0.0))
            rows[i, 3 * n] = math.log10(1.0 + layer.x.get("flops", 0.0))
            rows[i, 3 * n + 1] = 1.0
        return rows

    @classmethod
    def fit(cls, design: np.ndarray, residuals: np.ndarray) -> Context:
        if len(residuals) == 0:
            return cls()
        gram = design.T @ design + _CONTEXT_RIDGE * np.eye(design.shape[1])
        return cls(np.linalg.solve(gram, design.T @ residuals), len(residuals))

    def __call__(self, design: np.ndarray) -> np.ndarray:
        return np.zeros(len(design)) if self.coef is None else design @ self.coef

    def to_json(self) -> dict[str, Any]:
        return {"kinds": list(KINDS), "coef": None if self.coef is None else self.coef.tolist(), "rows": self.rows}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Context:
        if not data or data.get("coef") is None:
            return cls()
        if list(data["kinds"]) != list(KINDS):
            raise ValueError("the stored layer context was fitted on other layer kinds; recalibrate")
        return cls(data["coef"], int(data.get("rows", 0)))


@dataclass
class Prediction:
    """A model's predicted latency and how it was reached."""

    latency_ms: float
    sum_ms: float
    correction: float
    layers: list[dict[str, Any]]
    features: dict[str, float]


class Predictor:
    """Per-kind layer models, a whole-model correction, and the target they were calibrated on."""

    def __init__(
        self,
        identity: TargetIdentity,
        kinds: dict[str, KindModel],
        correction: Correction,
        constants: dict[str, float] | None = None,
        reference_ms: float | None = None,
        meta: dict[str, Any] | None = None,
        calibration_rows: dict[str, list[list[float]]] | None = None,
        context: Context | None = None,
    ) -> None:
        self.identity = identity
        self.kinds = kinds
        self.correction = correction
        self.constants = dict(constants or DEFAULT_CONSTANTS)
        self.reference_ms = reference_ms
        self.meta = dict(meta or {})
        self.calibration_rows = calibration_rows or {"features": [], "residuals": []}
        self.context = context or Context()
        self.id = self.meta.get("id") or ""

    @property
    def runtime(self) -> str:
        """The runtime it predicts (``nas.timing.runtimes.RUNTIMES``): under ``onnxruntime`` a sparse layer
        runs dense (ONNX Runtime has no faster unstructured-sparse kernel), so CSR forms are never chosen."""
        return str(self.meta.get("runtime", "torch"))

    @property
    def overhead_ms(self) -> float:
        """The runtime's fixed cost per model call (an ONNX Runtime session's ``run``), which layer times
        measured as one-layer models leave out; 0 where layers were timed inside PyTorch."""
        return float(self.meta.get("overhead_ms", 0.0))

    # -- prediction ---------------------------------------------------------------------------------

    def layer_times(self, layers: Sequence[Layer]) -> np.ndarray:
        """Milliseconds per layer (its own form, never its alternative)."""
        times = np.zeros(len(layers))
        by_kind: dict[str, list[int]] = {}
        for i, layer in enumerate(layers):
            by_kind.setdefault(layer.kind, []).append(i)
        for kind, indices in by_kind.items():
            model = self.kinds.get(kind)
            if model is None:
                raise NoPredictor(f"the predictor has no model for {kind!r} layers; recalibrate")
            rows = [self._with_roofline(layers[i]) for i in indices]
            times[indices] = model.predict(rows)
        return times

    def _with_roofline(self, layer: Layer) -> dict[str, float]:
        x = layer.x
        return {**x, "roofline": roofline_seconds(x.get("flops", 0.0), x.get("bytes", 0.0), self.constants) * 1e6}

    def predict_traces(
        self,
        traces: Sequence[Trace],
        kernels: Sequence[Mapping[str, str] | str] | str = "auto",
        scale: float = 1.0,
        correction: Correction | None = None,
    ) -> list[Prediction]:
        """One :class:`Prediction` per trace.

        ``kernels`` ("auto", "as_is", or weight name -> kernel; per trace or one for all) says how a
        sparse layer runs: "auto" picks CSR where predicted faster by the converter's margin. ``scale``
        multiplies every layer time (a predictor calibrated on another machine), ``correction``
        replaces the stored one (an online refit).
        """
        if not self.runtime.startswith("torch"):
            kernels = "as_is"  # dense kernels only; shrunk layers are already in the trace
        per_trace = [kernels] * len(traces) if isinstance(kernels, (str, Mapping)) else list(kernels)
        flat: list[Layer] = []
        params: list[float] = []
        for trace, choice in zip(traces, per_trace):
            flat.extend(trace.layers)
            if choice != "as_is":
                flat.extend(layer.alt for layer in trace.layers if layer.alt is not None)
            params.extend([trace.params] * (len(flat) - len(params)))
        times = self.layer_times(flat) * np.exp(self.context(Context.design(flat, params)))
        if not self.runtime.startswith("torch"):
            position = 0
            for trace in traces:
                n = len(trace.layers)
                times[position : position + n] *= ~fused_away(trace.layers)
                position += n
        position, results = 0, []
        for trace, choice in zip(traces, per_trace):
            n = len(trace.layers)
            own = times[position : position + n]
            alt_ids = [i for i, layer in enumerate(trace.layers) if layer.alt is not None and choice != "as_is"]
            alts = dict(zip(alt_ids, times[position + n : position + n + len(alt_ids)]))
            position += n + len(alt_ids)
            results.append(self._combine(trace, own, alts, choice, scale, correction or self.correction))
        return results

    def _combine(
        self,
        trace: Trace,
        own: np.ndarray,
        alts: dict[int, float],
        choice: Mapping[str, str] | str,
        scale: float,
        correction: Correction,
    ) -> Prediction:
        chosen, details = [], []
        for i, layer in enumerate(trace.layers):
            kernel, kind, ms = _kernel_of(layer), layer.kind, float(own[i])
            if i in alts and choice != "as_is":
                wants = choice.get(layer.weight or "") if isinstance(choice, Mapping) else None
                csr_wins = alts[i] < CSR_MARGIN * own[i]
                if wants == "csr" or (wants is None and csr_wins):
                    kernel, kind, ms = "csr", layer.alt.kind, float(alts[i])
            chosen.append((layer, kernel, ms))
            details.append({"name": layer.name, "kind": kind, "kernel": kernel, "ms": ms * scale})
        total = (sum(ms for _, _, ms in chosen) + self.overhead_ms) * scale
        features = self.model_features(trace, chosen, total)
        factor = float(correction(self.feature_vector(features)[None, :])[0])
        return Prediction(total * math.exp(factor), total, factor, details, features)

    @staticmethod
    def model_features(trace: Trace, chosen: Sequence[tuple[Layer, str, float]], total_ms: float) -> dict[str, float]:
        """The correction's inputs (``CORRECTION_FEATURES``) for a trace whose layers run as ``chosen``."""
        base = trace.model_features()
        return {
            "log_sum_ms": math.log(max(total_ms, _MIN_MS)),
            "log_module_calls": math.log1p(base["module_calls"]),
            "log_functional_calls": math.log1p(base["functional_calls"]),
            "log_peak_elements": math.log1p(base["peak_elements"]),
            "log_params": math.log1p(base["params"]),
        }

    @staticmethod
    def feature_vector(features: Mapping[str, float]) -> np.ndarray:
        return np.array([features[name] for name in CORRECTION_FEATURES], dtype=float)

    # -- fitting ------------------------------------------------------------------------------------

    @classmethod
    def fit_layers(
        cls, identity: TargetIdentity, samples: Sequence[tuple[Layer, float]], constants: dict[str, float],
        runtime: str = "torch",
    ) -> Predictor:
        """Layer models from measured ``(layer, ms)`` samples; the correction starts as identity."""
        by_kind: dict[str, tuple[list[dict[str, float]], list[float]]] = {}
        for layer, ms in samples:
            rows, ys = by_kind.setdefault(layer.kind, ([], []))
            rows.append({**layer.x, "roofline": roofline_seconds(layer.x.get("flops", 0.0), layer.x.get("bytes", 0.0),
                                                                 constants) * 1e6})  # fmt: skip
            ys.append(ms)
        kinds = {kind: KindModel.fit(kind, rows, ys) for kind, (rows, ys) in by_kind.items()}
        return cls(identity, kinds, Correction(), constants, meta={"runtime": runtime})

    def fit_context(self, samples: Sequence[tuple[Layer, float, float]]) -> None:
        """Fit :class:`Context` on ``(layer, ms measured inside a model, the model's parameters)``."""
        if not samples:
            self.context = Context()
            return
        layers = [layer for layer, _, _ in samples]
        alone = self.layer_times(layers)
        measured = np.array([ms for _, ms, _ in samples])
        design = Context.design(layers, [p for _, _, p in samples])
        self.context = Context.fit(design, np.log(np.maximum(measured, _MIN_MS) / alone))

    def with_context(self, samples: Sequence[tuple[Layer, float, float]]) -> Predictor:
        """A copy sharing these layer models, its context fitted on ``samples`` and no correction."""
        copy = Predictor(self.identity, self.kinds, Correction(), self.constants, self.reference_ms, dict(self.meta))
        copy.fit_context(samples)
        return copy

    def fit_correction(
        self, traces: Sequence[Trace], latencies_ms: Sequence[float], kernels: Sequence[Mapping[str, str] | str] | str = "auto"
    ) -> None:
        """Fit the whole-model correction on measured models (kept, for later online refits)."""
        predictions = self.predict_traces(traces, kernels)
        features = np.array([self.feature_vector(p.features) for p in predictions])
        residuals = np.log(np.asarray(latencies_ms, dtype=float)) - np.array([math.log(p.sum_ms) for p in predictions])
        self.correction = Correction.fit(features.reshape(len(predictions), -1), residuals)
        self.calibration_rows = {"features": features.tolist(), "residuals": residuals.tolist()}

    def refit_correction(self, observed: Sequence[tuple[np.ndarray, float]]) -> Correction:
        """The correction refitted on the calibration models plus ``observed`` ``(features, log residual)``
        pairs. They are the real workload, so each weighs at least two calibration models, and the
        first ten together already weigh as much as the whole calibration."""
        base_x = np.asarray(self.calibration_rows["features"], dtype=float).reshape(-1, len(CORRECTION_FEATURES))
        base_y = np.asarray(self.calibration_rows["residuals"], dtype=float)
        obs_x = np.array([x for x, _ in observed], dtype=float).reshape(-1, len(CORRECTION_FEATURES))
        obs_y = np.array([y for _, y in observed], dtype=float)
        x = np.vstack([base_x, obs_x])
        y = np.concatenate([base_y, obs_y])
        weight = max(2.0, len(base_y) / max(len(obs_y), 10))
        w = np.concatenate([np.ones(len(base_y)), np.full(len(obs_y), weight)])
        return Correction.fit(x, y, w)

    # -- storage ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        body = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "identity": self.identity.as_dict(),
            "constants": self.constants,
            "reference_ms": self.reference_ms,
            "meta": {k: v for k, v in self.meta.items() if k != "id"},
            "kinds": {kind: model.to_json() for kind, model in sorted(self.kinds.items())},
            "correction": self.correction.to_json(),
            "context": self.context.to_json(),
            "calibration_rows": self.calibration_rows,
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        body["meta"]["id"] = digest
        self.id = self.meta["id"] = digest
        return body

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Predictor:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a latency predictor (format {data.get('format')!r}, expected {FORMAT!r})")
        if int(data.get("format_version", 0)) != FORMAT_VERSION:
            raise ValueError(
                f"latency predictor format version {data.get('format_version')} is not {FORMAT_VERSION}; recalibrate"
            )
        unknown = set(data["kinds"]) - set(KINDS)
        if unknown:
            raise ValueError(f"latency predictor has models for unknown layer kinds {sorted(unknown)}")
        return cls(
            TargetIdentity.from_dict(data["identity"]),
            {kind: KindModel.from_json(kind, model) for kind, model in data["kinds"].items()},
            Correction.from_json(data["correction"]),
            {k: float(v) for k, v in data["constants"].items()},
            data.get("reference_ms"),
            data.get("meta", {}),
            data.get("calibration_rows"),
            Context.from_json(data.get("context")),
        )

    @classmethod
    def loads(cls, text: str) -> Predictor:
        return cls.from_json(json.loads(text))


# What ONNX Runtime's graph optimisations fold into the convolution before them (Conv+BatchNorm, FusedConv).
_FOLDED_NORMS = {"BatchNorm2d", "BatchNorm1d"}
_FUSED_ACTIVATIONS = {"ReLU", "ReLU6", "LeakyReLU", "Sigmoid", "Tanh", "Hardsigmoid", "Hardtanh", "fn:relu",
                      "fn:sigmoid", "fn:tanh"}  # fmt: skip


def fused_away(layers: Sequence[Layer]) -> np.ndarray:
    """Which layers ONNX Runtime runs inside the convolution before them: a BatchNorm right after a
    convolution (folded into its weights) and an activation after either (a fused convolution)."""
    fused = np.zeros(len(layers), dtype=bool)
    after_conv = False
    for i, layer in enumerate(layers):
        op = OPS[int(layer.x.get("op", 0))] if layer.kind in ("norm", "elementwise") else ""
        if after_conv and layer.kind == "norm" and op in _FOLDED_NORMS:
            fused[i] = True
            continue
        if after_conv and layer.kind == "elementwise" and op in _FUSED_ACTIVATIONS:
            fused[i] = True
            after_conv = False
            continue
        after_conv = layer.kind in ("conv", "csr_conv")
    return fused


def _kernel_of(layer: Layer) -> str:
    if layer.kind.startswith("csr"):
        return "csr"
    if layer.x.get("semi_structured"):
        return "semi_structured"
    return "dense"

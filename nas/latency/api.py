"""``predict`` and ``refine``: the predictor as the search uses it, before and after training.

``predict`` answers for any ``nn.Module`` of standard layers. By default (``kernels="auto"``) it
predicts the latency of the sparse inference model the trial will be measured as
(:func:`nas.sparse.inference.to_inference`): units that are gone are removed (smaller dense
layers), and every sparse ``Linear``/``Conv2d`` runs dense or as a CSR product, whichever the
predictor finds faster by the converter's margin. A model that already holds CSR layers is an
inference model and is predicted as it is, as is any model with ``kernels="as_is"`` (a masked
model run dense).

``refine`` records a measured latency, so predictions follow the machine as trials finish: the
whole-model correction is refitted on the latest observations of the predictor and target. It is
two steps, which the service runs on different machines: ``observe`` (where the model was
measured, writing nothing) makes the observation, which travels with the trial's result to the
runner, which keeps it in the database; every process predicting there refits from the database
(:func:`nas.latency.store.use_observations`), caching the refit until an observation arrives.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Hashable, Mapping
from typing import Any

from torch import nn

from nas.latency import store
from nas.latency.features import Trace, trace
from nas.latency.shrinkage import shrink_plan
from nas.latency.predictor import Correction, Predictor
from nas.timing.targets import TargetIdentity, identity

PATTERNS = ("unstructured", "nm", "channel")
OBSERVATION_WINDOW = 2000  # the latest observations a correction is refitted on
# (target key, predictor id) -> (the source read, its revision then, the refitted correction)
_corrections: dict[tuple[str, str], tuple[store.ObservationSource, Hashable, Correction]] = {}
_lock = threading.Lock()


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a sequence of positive integers, got {input_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty sequence of positive integers, got {input_shape!r}")
    return shape


def _densities(model: nn.Module, densities: float | Mapping[str, float] | None) -> dict[str, float] | None:
    """``densities`` as weight name -> density over the model's ``Linear``/``Conv2d`` weights, checked."""
    if densities is None:
        return None
    names = [f"{path}.weight" if path else "weight" for path, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))]  # fmt: skip
    if isinstance(densities, (int, float)):
        if not 0 < float(densities) <= 1:
            raise ValueError(f"densities must be in (0, 1], got {densities}")
        return {name: float(densities) for name in names}
    unknown = sorted(set(densities) - set(names))
    if unknown:
        raise ValueError(f"densities name unknown weights {unknown}; valid: {names}")
    for name, value in densities.items():
        if not 0 < float(value) <= 1:
            raise ValueError(f"densities[{name!r}] must be in (0, 1], got {value}")
    return {name: float(value) for name, value in densities.items()}


def _has_csr(model: nn.Module) -> bool:
    from nas.sparse.csr import CSRConv2d, CSRLinear

    return any(isinstance(m, (CSRLinear, CSRConv2d)) for m in model.modules())


def prepare_trace(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    densities: float | Mapping[str, float] | None = None,
    kernels: str | Mapping[str, str] = "auto",
    pattern: str = "unstructured",
) -> Trace:
    """The trace :func:`predict` works on: of the model as it would be deployed (see the module docstring)."""
    input_shape = _check_input_shape(input_shape)
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    if kernels == "as_is" or _has_csr(model):
        return trace(model, input_shape, batch_size)
    if not isinstance(kernels, Mapping) and kernels != "auto":
        raise ValueError(f"kernels must be 'auto', 'as_is' or a mapping weight name -> kernel, got {kernels!r}")
    chosen = _densities(model, densities)
    limits = None
    if chosen and pattern == "channel":  # whole units go: the layers shrink, what is left is dense
        limits = {name: max(1, round(d * model.get_submodule(name.rpartition(".")[0]).weight.shape[0]))
                  for name, d in chosen.items()}  # fmt: skip
        chosen = None
    plan = shrink_plan(model, limits)
    return trace(model, input_shape, batch_size, alternatives=True, densities=chosen, pattern=pattern, shrink=plan)


def _scale(target_id: TargetIdentity, predictor: Predictor, source: str) -> float:
    """How much slower this machine runs the reference model than the predictor's; 1 on the same machine."""
    if source != "bundled" or predictor.identity.same_machine(target_id) or not predictor.reference_ms:
        return 1.0
    ref_id = TargetIdentity(target_id.target, target_id.device, target_id.num_threads, 1, target_id.torch)
    here = store.reference_timing(ref_id)
    if here is None:
        from nas.timing.measure import measure, reference_model

        model, shape = reference_model()
        here = min(  # the undisturbed speed, as at calibration: p10s a moment apart
            measure(model, shape, target=target_id.target, num_threads=target_id.num_threads, min_run_time=0.1,
                    rounds=1)["p10_ms"]
            for _ in range(3)
        )  # fmt: skip
        store.save_reference_timing(ref_id, here)
    return min(max(here / predictor.reference_ms, 0.1), 10.0)


def _correction(target_id: TargetIdentity, predictor: Predictor) -> Correction:
    """The correction refitted on this process's observations of this predictor and target, else
    the predictor's own; refitted again only when the source's revision says one was added."""
    source = store.observation_source()
    key = (target_id.key(), predictor.id)
    revision = source.revision(*key)
    if revision is None:
        return predictor.correction
    with _lock:
        cached = _corrections.get(key)
    if cached is not None and cached[0] is source and cached[1] == revision:
        return cached[2]
    found = source.records(*key, OBSERVATION_WINDOW)
    correction = predictor.refit_correction(
        [(Predictor.feature_vector(o["features"]), math.log(o["measured_ms"] / o["sum_ms"])) for o in found]
    ) if found else predictor.correction  # fmt: skip
    with _lock:
        _corrections[key] = (source, revision, correction)
    return correction


def resolve(target: str = "cpu", num_threads: int = 1, batch_size: int = 1) -> dict[str, Any]:
    """The predictor ``predict`` would use: identity, predictor, its source, scale and correction."""
    target_id = identity(target, num_threads, batch_size)
    predictor, source = store.find_predictor(target_id)
    return {
        "identity": target_id,
        "predictor": predictor,
        "source": source,
        "scale": _scale(target_id, predictor, source),
        "correction": _correction(target_id, predictor),
    }


def predict_details(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: str = "cpu",
    densities: float | Mapping[str, float] | None = None,
    batch_size: int = 1,
    *,
    num_threads: int = 1,
    kernels: str | Mapping[str, str] = "auto",
    pattern: str = "unstructured",
) -> dict[str, Any]:
    """:func:`predict` with its workings: per-layer times and kernels, the predictor used, the target."""
    identity(target, num_threads, batch_size)  # an unavailable target is refused before any work
    traced = prepare_trace(model, input_shape, batch_size, densities, kernels, pattern)
    resolved = resolve(target, num_threads, batch_size)
    predictor: Predictor = resolved["predictor"]
    prediction = predictor.predict_traces([traced], kernels, resolved["scale"], resolved["correction"])[0]
    return {
        "latency_ms": prediction.latency_ms,
        "sum_ms": prediction.sum_ms,
        "correction": prediction.correction,
        "layers": prediction.layers,
        "features": prediction.features,
        "target": resolved["identity"].as_dict(),
        "predictor": {
            "id": predictor.id, "source": resolved["source"], "scale": resolved["scale"],
            "calibrated_on": predictor.identity.as_dict(), "created_at": predictor.meta.get("created_at"),
        },  # fmt: skip
    }


def predict(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: str = "cpu",
    densities: float | Mapping[str, float] | None = None,
    batch_size: int = 1,
    *,
    num_threads: int = 1,
    kernels: str | Mapping[str, str] = "auto",
    pattern: str = "unstructured",
) -> float:
    """Predicted latency in milliseconds of ``model`` on inputs ``(batch_size, *input_shape)`` on ``target``.

    ``densities`` (one float for every ``Linear``/``Conv2d`` weight, or weight name -> nonzero
    fraction) predicts a model whose masks are not made yet, with sparsity of ``pattern``
    ("unstructured", "nm", or "channel": whole output units removed). ``kernels``: "auto" (the
    inference model, see the module docstring), "as_is", or weight name -> "dense" | "csr" |
    "shrunk" as a trial stored them. Raises ``UnsupportedLayer`` for a module type it has no model
    for, ``TargetUnavailable`` for a target not present here, ``NoPredictor`` if nothing is calibrated.
    """
    return predict_details(model, input_shape, target, densities, batch_size, num_threads=num_threads,
                           kernels=kernels, pattern=pattern)["latency_ms"]  # fmt: skip


def observe(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: str,
    measured_ms: float,
    batch_size: int = 1,
    *,
    num_threads: int = 1,
    kernels: str | Mapping[str, str] = "as_is",
) -> dict[str, Any]:
    """The observation that ``model`` measured ``measured_ms`` on ``target``, for :func:`record`; writes nothing.

    Pass the model that was measured (a trial's inference model, hence ``kernels="as_is"``). The
    record (plain JSON) holds ``target_key`` and ``predictor_id`` (which predictor and machine it
    refines), the model-level ``features`` and summed layer times ``sum_ms`` the correction is
    refitted on, ``predicted_ms`` (the prediction here, before refining), ``measured_ms`` and ``time``.
    """
    if not (isinstance(measured_ms, (int, float)) and math.isfinite(measured_ms) and measured_ms > 0):
        raise ValueError(f"measured_ms must be a positive number, got {measured_ms!r}")
    identity(target, num_threads, batch_size)
    traced = prepare_trace(model, input_shape, batch_size, None, kernels)
    resolved = resolve(target, num_threads, batch_size)
    predictor: Predictor = resolved["predictor"]
    prediction = predictor.predict_traces([traced], kernels, resolved["scale"], resolved["correction"])[0]
    return {
        "target_key": resolved["identity"].key(),
        "predictor_id": predictor.id,
        "features": prediction.features,
        "sum_ms": prediction.sum_ms,
        "predicted_ms": prediction.latency_ms,
        "measured_ms": float(measured_ms),
        "time": time.time(),
    }


def record(observation: Mapping[str, Any]) -> None:
    """Keep an observation from :func:`observe` where this process's predictions read it
    (:func:`nas.latency.store.use_observations`); the next prediction refits on it."""
    store.observation_source().add(observation)


def refine(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: str,
    measured_ms: float,
    batch_size: int = 1,
    *,
    num_threads: int = 1,
    kernels: str | Mapping[str, str] = "as_is",
) -> dict[str, Any]:
    """Record that ``model`` measured ``measured_ms`` on ``target``: :func:`observe`, then :func:`record`.

    By default the observation is appended to ``$NAS_HOME/latency/observations/`` and later
    predictions use the correction refitted on the calibration models plus every observation made
    with this predictor (milliseconds of work; see :meth:`Predictor.refit_correction` for how they
    are weighed). Returns the prediction before refining, the measurement and the number of observations.
    """
    observation = observe(model, input_shape, target, measured_ms, batch_size, num_threads=num_threads,
                          kernels=kernels)  # fmt: skip
    record(observation)
    found = store.observation_source().records(observation["target_key"], observation["predictor_id"],
                                               OBSERVATION_WINDOW)  # fmt: skip
    return {"predicted_ms": observation["predicted_ms"], "measured_ms": observation["measured_ms"],
            "observations": len(found)}  # fmt: skip


def predict_on(
    predictor: Predictor,
    model: nn.Module,
    input_shape: tuple[int, ...],
    densities: float | Mapping[str, float] | None = None,
    batch_size: int = 1,
    *,
    kernels: str | Mapping[str, str] = "auto",
    pattern: str = "unstructured",
) -> dict[str, Any]:
    """:func:`predict_details` with a given predictor: an agent target's, kept in the service's store
    rather than calibrated on this machine. Its correction is refitted on the observations recorded
    for it (:func:`record`), so every trial its agents measure refines the next predictions. Returns
    ``latency_ms``, ``sum_ms``, ``features`` and the ``target_key`` and ``predictor_id`` an
    observation of it is recorded under."""
    traced = prepare_trace(model, input_shape, batch_size, densities, kernels, pattern)
    prediction = predictor.predict_traces([traced], kernels, 1.0, _correction(predictor.identity, predictor))[0]
    return {
        "latency_ms": prediction.latency_ms, "sum_ms": prediction.sum_ms, "features": prediction.features,
        "target_key": predictor.identity.key(), "predictor_id": predictor.id,
    }  # fmt: skip

"""What a candidate will cost, known before it trains: its parameters and predicted latency.

The runner asks this for every plan, records the answers on the trial and refuses (state
``infeasible``, never trained) a candidate that breaks ``constraints.max_params`` or
``constraints.max_latency_ms``.
"""

from __future__ import annotations

import logging
from typing import Any

from nas import registry
from nas.search_space import SearchSpace
from nas.specs import JobSpec
from nas.strategies import Strategy

log = logging.getLogger(__name__)


def planned_metrics(
    spec: JobSpec, space: SearchSpace, strategy: type[Strategy], arch: dict[str, Any]
) -> dict[str, float]:
    """``params`` and ``predicted_latency_ms`` of ``arch`` at the density the job will train it to."""
    from nas.latency import NoPredictor, UnsupportedLayer, predict

    input_shape, num_classes = registry.datasets.create(spec.dataset.name, spec.dataset.params).shape()
    space_arch = strategy.space_arch(arch)
    model = space.build(space_arch, input_shape, num_classes)
    params = sum(p.numel() for p in model.parameters())
    layer_sparsity = space.layer_sparsity(space_arch)
    planned_density = strategy.planned_density(arch)
    densities: dict[str, float] | float
    if planned_density is not None:
        densities = planned_density
    elif layer_sparsity:
        densities = {name: 1.0 - sparsity for name, sparsity in layer_sparsity.items()}
    else:
        densities = _target_density(spec)
    try:
        latency = predict(model, input_shape, target=spec.target, densities=densities, pattern=_pattern(spec))
    except NoPredictor:
        log.warning("no latency predictor for target %r: trials go without a predicted latency", spec.target)
        return {"params": float(params)}
    except UnsupportedLayer as exc:  # e.g. a one-shot supernet with mixed operations
        log.info("no latency prediction for this candidate: %s", exc)
        return {"params": float(params)}
    except Exception:  # a broken predictor file must not stop the search; a latency constraint then refuses
        log.exception("predicting the latency of a candidate for target %r failed", spec.target)
        return {"params": float(params)}
    return {"params": float(params), "predicted_latency_ms": float(latency)}


def violation(spec: JobSpec, metrics: dict[str, float]) -> str | None:
    """Why a candidate with these planned metrics breaks the job's constraints, or ``None``."""
    limits = spec.constraints
    if limits.max_params is not None and metrics["params"] > limits.max_params:
        return f"{metrics['params']:.0f} parameters exceed constraints.max_params={limits.max_params}"
    if limits.max_latency_ms is not None and "predicted_latency_ms" not in metrics:
        return (f"constraints.max_latency_ms: no latency prediction for this candidate on {spec.target!r} "
                "(no predictor calibrated, or a layer the predictor does not model)")
    if limits.max_latency_ms is not None and metrics["predicted_latency_ms"] > limits.max_latency_ms:
        return (
            f"predicted latency {metrics['predicted_latency_ms']:.3f} ms exceeds "
            f"constraints.max_latency_ms={limits.max_latency_ms:g}"
        )
    return None


def _pattern(spec: JobSpec) -> str:
    """How the job's sparsifier removes weights, as the predictor distinguishes it."""
    return {"channel": "channel", "nm": "nm"}.get(spec.sparsifier.name, "unstructured")


def _target_density(spec: JobSpec) -> float:
    """The fraction of weights the job's sparsifier keeps: ``1 - sparsity``, or N/M for N:M."""
    params = spec.sparsifier.params
    if "n" in params and "m" in params:
        return params["n"] / params["m"]
    return 1.0 - float(params.get("sparsity") or 0.0)  # lottery by per-round rates names no sparsity: dense


"""What a candidate will cost, known before it trains: its parameters and predicted latency.

The runner asks this for every plan, records the answers on the trial and refuses (state
``infeasible``, never trained) a candidate that breaks ``constraints.max_params`` or
``constraints.max_latency_ms``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from nas import registry
from nas.data.tabular import TabularDataset
from nas.search_space import SearchSpace
from nas.specs import JobSpec
from nas.strategies import Strategy
from nas.timing.targets import all_targets

if TYPE_CHECKING:
    from torch import nn

    from nas.latency.predictor import Predictor

log = logging.getLogger(__name__)


def _candidate(spec: JobSpec, space: SearchSpace, strategy: type[Strategy], arch: dict[str, Any]) -> tuple[
    nn.Module, tuple[int, ...], dict[str, float] | float
]:
    """The untrained network of ``arch``, its input shape, and the density the job will train it to."""
    input_shape, num_classes = registry.datasets.create(spec.dataset.name, spec.dataset.params).shape()
    space_arch = strategy.space_arch(arch)
    model = space.build(space_arch, input_shape, num_classes)
    layer_sparsity = space.layer_sparsity(space_arch)
    planned_density = strategy.planned_density(arch)
    densities: dict[str, float] | float
    if planned_density is not None:
        densities = planned_density
    elif layer_sparsity:
        densities = {name: 1.0 - sparsity for name, sparsity in layer_sparsity.items()}
    else:
        densities = _target_density(spec)
    return model, input_shape, densities


def planned_metrics(
    spec: JobSpec, space: SearchSpace, strategy: type[Strategy], arch: dict[str, Any],
    target_predictor: Predictor | None = None,
) -> dict[str, float]:  # fmt: skip
    """``params`` and ``predicted_latency_ms`` of ``arch`` at the density the job will train it to; on an
    agent target, predicted by ``target_predictor`` (the target's, from the store), if it has one."""
    from nas.latency import NoPredictor, UnsupportedLayer, predict
    from nas.latency.api import predict_on
    from nas.training import trial_seed

    dataset = registry.datasets.create(spec.dataset.name, spec.dataset.params)
    if isinstance(dataset, TabularDataset):  # the table knows both: nothing to build or predict
        entry = dataset.lookup(arch, trial_seed(spec, arch)).metrics
        return {"params": entry["params"], "predicted_latency_ms": entry["latency_ms"]}
    model, input_shape, densities = _candidate(spec, space, strategy, arch)
    params = sum(p.numel() for p in model.parameters())
    if spec.target not in all_targets() and target_predictor is None:
        return {"params": float(params)}  # an agent target not calibrated yet
    try:
        if target_predictor is not None:
            latency = predict_on(target_predictor, model, input_shape, densities, pattern=_pattern(spec),
                                 kernels=runtime_kernels(spec.target_runtime, model))["latency_ms"]  # fmt: skip
        else:
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


def runtime_kernels(runtime: str | None, model: nn.Module) -> str | dict[str, str]:
    """How a runtime runs a sparse layer, as the predictor takes it: torch picks CSR where faster
    ("auto"); ONNX Runtime runs every layer dense (only shrunk layers are smaller)."""
    if runtime is None or runtime.startswith("torch"):
        return "auto"
    from nas.sparse.masks import prunable_weights

    return dict.fromkeys(prunable_weights(model), "dense")


def uncertain(spec: JobSpec, metrics: dict[str, float], band: float) -> bool:
    """Whether the predicted latency is too close to ``constraints.max_latency_ms`` to decide on: within
    ``band`` (the predictor's held-out relative error at the 90th percentile) of the limit, either side."""
    limit = spec.constraints.max_latency_ms
    predicted = metrics.get("predicted_latency_ms")
    return limit is not None and predicted is not None and abs(math.log(predicted / limit)) < math.log1p(band)


def probe_onnx(spec: JobSpec, space: SearchSpace, strategy: type[Strategy], arch: dict[str, Any]) -> tuple[
    bytes, tuple[int, ...]
]:
    """The candidate as an agent can time it before training: its untrained network with the smallest
    weights of each layer zeroed to the planned density, converted and exported to ONNX. Its latency is
    the trained model's wherever sparsity's speed depends on the amount kept, not on which weights."""
    import torch

    from nas.export import export_onnx
    from nas.sparse.inference import to_inference
    from nas.sparse.masks import prunable_weights

    model, input_shape, densities = _candidate(spec, space, strategy, arch)
    with torch.no_grad():
        for name, (module, attr) in prunable_weights(model).items():
            density = densities if isinstance(densities, float) else densities.get(name, 1.0)
            weight = getattr(module, attr)
            drop = int(round((1.0 - density) * weight.numel()))
            if drop > 0:
                weight.view(-1)[weight.abs().view(-1).argsort()[:drop]] = 0.0
    inference, _ = to_inference(model, input_shape, kernels=dict.fromkeys(prunable_weights(model), "dense"))
    return export_onnx(inference, input_shape, {"search_space": spec.search_space.name}), input_shape


def violation(spec: JobSpec, metrics: dict[str, float]) -> str | None:
    """Why a candidate with these planned metrics breaks the job's constraints, or ``None``. A latency
    measured on the target before training (``probed_latency_ms``) decides over a prediction."""
    limits = spec.constraints
    if limits.max_params is not None and metrics["params"] > limits.max_params:
        return f"{metrics['params']:.0f} parameters exceed constraints.max_params={limits.max_params}"
    if limits.max_latency_ms is not None and "probed_latency_ms" in metrics:
        if metrics["probed_latency_ms"] > limits.max_latency_ms:
            return (f"latency {metrics['probed_latency_ms']:.3f} ms, measured on the target before training, "
                    f"exceeds constraints.max_latency_ms={limits.max_latency_ms:g}")  # fmt: skip
        return None
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


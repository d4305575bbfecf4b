"""Calibration: measure layers and whole models on this machine, fit a predictor, store both.

1. Machine constants (peak GEMM rate, copy bandwidth) and the reference model's time.
2. Layer samples of every kind from the prior in :mod:`nas.latency.sampling`, each timed per
   call in two interleaved rounds; a first fit; then adaptive rounds: fresh samples are
   predicted, and around each one off by more than 10% its neighbours (channels and density)
   are measured too, as nn-Meter does.
3. Whole models from :mod:`nas.latency.zoo`, made sparse, converted by
   :func:`nas.sparse.inference.to_inference` (which times its kernel choices) and measured in two
   independent interleaved sessions beside the reference model; they fit the whole-model
   correction, and the two sessions give the noise ceiling.

The quick mode (``nas hardware calibrate --quick``) takes one to three minutes on a small machine;
the full mode about half an hour on a loaded 2-core VM.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.latency import store
from nas.latency.features import Layer, Trace
from nas.timing.measure import measure, measure_interleaved, reference_model, time_calls, timing_context
from nas.latency.predictor import Predictor
from nas.latency.roofline import measure_constants
from nas.latency.sampling import SAMPLED_KINDS, build, neighbours, sample_config, semi_structured_config
from nas.timing.targets import CUDA, TargetIdentity, identity
from nas.latency.zoo import FAMILIES, sample, sample_sparsity

DATA_FORMAT = "nas-latency-calibration-data"


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    layers_per_kind: dict[str, int]
    layer_seconds: float
    adaptive_rounds: int
    adaptive_fraction: float
    neighbours: int
    neighbour_cap: int
    models_per_family: int
    model_seconds: float
    max_flops: float

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            {"linear": 50, "conv": 80, "csr_linear": 50, "csr_conv": 40, "rnn": 40, "norm": 25, "pool": 25,
             "elementwise": 80},
            layer_seconds=0.04, adaptive_rounds=1, adaptive_fraction=0.15, neighbours=3, neighbour_cap=40,
            models_per_family=5, model_seconds=0.06, max_flops=1e8,
        )  # fmt: skip

    @classmethod
    def full(cls) -> Plan:
        return cls(
            {"linear": 400, "conv": 600, "csr_linear": 600, "csr_conv": 400, "rnn": 250, "norm": 120, "pool": 120,
             "elementwise": 300},
            layer_seconds=0.1, adaptive_rounds=3, adaptive_fraction=0.15, neighbours=10, neighbour_cap=250,
            models_per_family=40, model_seconds=0.15, max_flops=2e8,
        )  # fmt: skip


Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


LAYER_QUANTILE = 10  # per-call percentile a layer sample's time is
LAYER_ROUNDS = 3


def time_layers(
    configs: Sequence[dict[str, Any]],
    seconds: float,
    num_threads: int,
    seed: int,
    device: str = "cpu",
    rounds: int = LAYER_ROUNDS,
) -> list[tuple[dict[str, Any], Layer, float]]:
    """Build and time each configuration: the 10th percentile of its call times pooled over ``rounds``
    rounds, each round passing over every sample (so a sample's rounds lie a whole pass apart).

    A shared VM switches between a fast and a slow mode (a co-tenant on the sibling hyperthread or
    the same core; up to 2x, lasting seconds), and the modes are only partly shared by ops timed
    a moment apart, so dividing by a reference does not remove them. Rounds far apart in time let
    a sample be seen in the fast mode at least once, and a low pooled percentile then reports
    that: the layer's cost without interference. The whole-model correction maps the sum of these
    to the model statistic the predictor targets.
    """
    built = []
    for i, config in enumerate(configs):
        fn, layer = build(config, seed + i, device)
        built.append((config, layer, fn))
    calls: list[list[np.ndarray]] = [[] for _ in built]
    with timing_context(num_threads):
        for _ in range(rounds):
            for j, (_, _, fn) in enumerate(built):
                for _ in range(3):
                    fn()  # warm-up after the previous sample
                calls[j].append(time_calls(fn, seconds / rounds, min_calls=5, cuda=device == "cuda"))
    return [
        (config, layer, float(np.percentile(np.concatenate(c), LAYER_QUANTILE)) * 1e3)
        for (config, layer, _), c in zip(built, calls)
    ]


def sample_layers(plan: Plan, batch_size: int, rng: random.Random, target: str = "cpu") -> list[dict[str, Any]]:
    """The first batch of layer configurations (on ``cuda``, with 2:4 semi-structured Linears too)."""
    configs = [
        sample_config(kind, rng, batch_size, plan.max_flops)
        for kind in SAMPLED_KINDS
        for _ in range(plan.layers_per_kind.get(kind, 0))
    ]
    if target == CUDA:
        configs += [semi_structured_config(rng, batch_size) for _ in range(plan.layers_per_kind["linear"] // 2)]
    return configs


def layer_errors(predictor: Predictor, samples: Sequence[tuple[dict[str, Any], Layer, float]]) -> np.ndarray:
    predicted = predictor.layer_times([layer for _, layer, _ in samples])
    measured = np.array([ms for _, _, ms in samples])
    return predicted / measured - 1


def calibrate_layers(
    target_id: TargetIdentity, plan: Plan, constants: dict[str, float], seed: int, progress: Progress = _quiet
) -> tuple[Predictor, list[tuple[dict[str, Any], Layer, float]]]:
    """Layer samples and the layer models fitted on them, with adaptive sampling around high errors."""
    rng = random.Random(seed)
    device = target_id.target
    configs = sample_layers(plan, target_id.batch_size, rng, device)
    progress(f"timing {len(configs)} layer samples")
    samples = time_layers(configs, plan.layer_seconds, target_id.num_threads, seed, device=device)
    predictor = Predictor.fit_layers(target_id, [(layer, ms) for _, layer, ms in samples], constants)
    for r in range(plan.adaptive_rounds):
        fresh_plan = {kind: max(2, int(n * plan.adaptive_fraction)) for kind, n in plan.layers_per_kind.items()}
        fresh_configs = [sample_config(k, rng, target_id.batch_size, plan.max_flops)
                         for k, n in fresh_plan.items() for _ in range(n)]  # fmt: skip
        fresh = time_layers(fresh_configs, plan.layer_seconds, target_id.num_threads, seed + 10_000 * (r + 1),
                            device=device)  # fmt: skip
        errors = layer_errors(predictor, fresh)
        worst = [fresh[i][0] for i in np.argsort(-np.abs(errors)) if abs(errors[i]) > 0.10]
        around: list[dict[str, Any]] = []
        for config in worst:
            if len(around) >= plan.neighbour_cap:
                break
            around += neighbours(config, rng, plan.neighbours, plan.max_flops)
        around = around[: plan.neighbour_cap]
        progress(
            f"adaptive round {r + 1}: {float(np.mean(np.abs(errors) <= 0.10)):.0%} of {len(fresh)} fresh layers "
            f"within ±10%; measuring {len(around)} neighbours of the {len(worst)} worst"
        )
        samples += fresh + time_layers(around, plan.layer_seconds, target_id.num_threads, seed + 20_000 * (r + 1),
                                       device=device)  # fmt: skip
        predictor = Predictor.fit_layers(target_id, [(layer, ms) for _, layer, ms in samples], constants)
    return predictor, samples


def model_records(
    target_id: TargetIdentity,
    plan: Plan,
    seed: int,
    progress: Progress = _quiet,
    families: Sequence[str] = FAMILIES,
    per_family: int | None = None,
) -> list[dict[str, Any]]:
    """Sample, sparsify, convert and measure whole models in two independent interleaved sessions."""
    from nas.latency.api import prepare_trace
    from nas.sparse.inference import to_inference

    rng = random.Random(seed + 1)
    count = per_family or plan.models_per_family
    records, inference_models = [], []
    for f, family in enumerate(families):
        for i in range(count):
            drawn = sample(family, rng, sample_sparsity(rng), seed=seed + 1000 * f + i)
            inference, decisions = to_inference(
                drawn.model, drawn.input_shape, batch_size=target_id.batch_size, target=target_id.target,
                num_threads=target_id.num_threads,
            )  # fmt: skip
            traced = prepare_trace(drawn.model, drawn.input_shape, target_id.batch_size)
            densities = [layer.alt.x["density"] for layer in traced.layers if layer.alt is not None]
            records.append({
                "family": family, "config": drawn.config, "trace": traced.to_json(),
                "kernels": {d["name"]: d["kernel"] for d in decisions},
                "min_density": min(densities, default=1.0),
                "sparse": drawn.config["sparsity"]["pattern"] != "dense",
            })  # fmt: skip
            inference_models.append((inference, drawn.input_shape))
        progress(f"built and converted {count} {family} models")
    sessions = []
    for s in range(2):
        order = list(range(len(records)))
        random.Random(seed + 7 + s).shuffle(order)  # each session interleaves in its own order
        progress(f"measuring {len(records)} models, session {s + 1} of 2")
        results = measure_interleaved(
            [inference_models[i] for i in order], target_id.target, target_id.batch_size, target_id.num_threads,
            min_run_time=plan.model_seconds, rounds=5,  # rounds a pass apart: some catch the fast mode
        )  # fmt: skip
        session = [None] * len(records)
        for i, result in zip(order, results):
            session[i] = result
        sessions.append(session)
    for i, record in enumerate(records):
        record["sessions"] = [
            {k: v for k, v in sessions[s][i].items() if k.endswith("_ms")}
            for s in range(2)
        ]
    return records


def truth(record: dict[str, Any], statistic: str = "p10_ms") -> float:
    """A model's measured latency: the geometric mean of its two sessions' ``statistic``."""
    a, b = (session[statistic] for session in record["sessions"])
    return math.sqrt(a * b)


def calibrate(
    target: str = "cpu",
    num_threads: int = 1,
    batch_size: int = 1,
    quick: bool = False,
    seed: int = 0,
    progress: Progress = _quiet,
    statistic: str = "p10_ms",
    save: bool = True,
) -> dict[str, Any]:
    """Measure, fit and (with ``save``) store a predictor for this machine; returns a summary."""
    target_id = identity(target, num_threads, batch_size)
    plan = Plan.quick() if quick else Plan.full()
    started = time.perf_counter()
    progress(f"calibrating {target_id.key()} ({'quick' if quick else 'full'})")
    constants = measure_constants(num_threads, "cuda" if target == "cuda" else "cpu")
    ref_model, ref_shape = reference_model()

    def time_reference() -> float:
        return measure(ref_model, ref_shape, target=target, num_threads=num_threads, min_run_time=0.3)["p10_ms"]

    references = [time_reference()]
    reference_ms = references[0]
    progress(f"peak {constants['peak_flops'] / 1e9:.1f} GFLOP/s, bandwidth {constants['bandwidth'] / 1e9:.1f} GB/s, "
             f"reference model {reference_ms:.3f} ms")  # fmt: skip
    predictor, layer_samples = calibrate_layers(target_id, plan, constants, seed, progress)
    layer_minutes = (time.perf_counter() - started) / 60
    references.append(time_reference())
    records = model_records(target_id, plan, seed, progress)
    references.append(time_reference())
    reference_ms = min(references)  # the machine's undisturbed speed, as the p10 statistics are
    traces = [Trace.from_json(r["trace"]) for r in records]
    predictor.fit_correction(traces, [truth(r, statistic) for r in records])
    predictor.reference_ms = reference_ms
    minutes = (time.perf_counter() - started) / 60
    predictor.meta = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "quick" if quick else "full",
        "layer_samples": len(layer_samples),
        "models": len(records),
        "statistic": statistic,
        "calibration_minutes": round(minutes, 2),
        "seed": seed,
    }
    data = {
        "format": DATA_FORMAT,
        "identity": target_id.as_dict(),
        "constants": constants,
        "reference_ms": reference_ms,
        "meta": {**predictor.meta, "layer_minutes": round(layer_minutes, 2)},
        "layers": [{"config": c, "layer": layer.to_json(), "ms": ms} for c, layer, ms in layer_samples],
        "models": records,
    }
    paths = {}
    if save:
        paths["predictor"] = str(store.save_predictor(predictor))
        data_path = store.path_for("data", target_id)
        store.write_json(data_path, data)
        paths["data"] = str(data_path)
        store.save_reference_timing(
            TargetIdentity(target_id.target, target_id.device, num_threads, 1, target_id.torch), reference_ms
        )
    return {"identity": target_id.as_dict(), "meta": predictor.meta, "paths": paths, "predictor": predictor,
            "data": data}  # fmt: skip

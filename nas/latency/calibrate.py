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
import torch
from torch import nn

from nas.latency import store
from nas.latency.features import Layer, Trace
from nas.timing.measure import measure, measure_interleaved, reference_model, time_calls, timing_context
from nas.timing.protocol import summary
from nas.latency.predictor import Predictor
from nas.latency.roofline import measure_constants
from nas.latency.roofline import DEFAULT_CONSTANTS
from nas.latency.sampling import (
    SAMPLED_KINDS, build, module_sample, neighbours, sample_chain, sample_config, semi_structured_config,
)  # fmt: skip
from nas.latency.timers import ModelTimer, TorchTimer
from nas.timing.runtimes import TORCH
from nas.timing.targets import CPU, CUDA, TargetIdentity, cpu_model, torch_version
from nas.timing.targets import identity as _local_identity
from nas.latency.zoo import FAMILIES, sample, sample_sparsity, sparsify

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
    def medium(cls) -> Plan:
        return cls(
            {"linear": 120, "conv": 160, "csr_linear": 100, "csr_conv": 80, "rnn": 90, "norm": 40, "pool": 40,
             "elementwise": 120},
            layer_seconds=0.05, adaptive_rounds=1, adaptive_fraction=0.15, neighbours=4, neighbour_cap=80,
            models_per_family=14, model_seconds=0.08, max_flops=1.5e8,
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


def isolated(samples: Sequence[tuple[dict[str, Any], Layer, float]]) -> list[tuple[Layer, float]]:
    """Layer samples timed alone, as ``(layer, ms)``."""
    return [(layer, ms) for _, layer, ms in samples]


def layer_errors(predictor: Predictor, samples: Sequence[tuple[dict[str, Any], Layer, float]]) -> np.ndarray:
    predicted = predictor.layer_times([layer for layer, _ in isolated(samples)])
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
    predictor = Predictor.fit_layers(target_id, isolated(samples), constants)
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
        predictor = Predictor.fit_layers(target_id, isolated(samples), constants)
    return predictor, samples


class _InSitu:
    """Forward hooks timing each layer of a model inside the model's own forward pass."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.calls: dict[nn.Module, list[float]] = {m: [] for m in modules}
        self.started: dict[nn.Module, float] = {}
        self.handles = [h for m in modules for h in (m.register_forward_pre_hook(self.pre), m.register_forward_hook(self.post))]

    def pre(self, module: nn.Module, args: Any) -> None:
        self.started[module] = time.perf_counter()

    def post(self, module: nn.Module, args: Any, out: Any) -> None:
        self.calls[module].append(time.perf_counter() - self.started[module])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def time_with_context(
    entries: Sequence[tuple[nn.Module, tuple[int, ...]]],
    batch_size: int,
    num_threads: int,
    min_run_time: float,
    rounds: int,
) -> tuple[list[dict[str, float]], list[dict[nn.Module, list[float]]], list[dict[nn.Module, Layer]]]:
    """Models timed round-robin as :func:`nas.timing.measure.measure_interleaved` does, and in the same
    rounds, right after each model, its layers timed where they run: inside the model's forward pass
    (forward hooks), after the layer before them, with the caches the model leaves.

    Returns per model the protocol statistics of the plain calls, the per-call seconds of each layer
    called once per pass, and the traced :class:`Layer` of each such module. Timed alone, a layer is
    up to 2x faster than inside a model, which a sum of isolated layer times misses and a whole-model
    correction can only learn per family; timing both in the same rounds keeps a shared machine's
    fast and slow phases out of the comparison.
    """
    from nas.latency.features import _leaves, trace

    prepared = []
    for model, shape in entries:
        model.eval()
        leaves, _ = _leaves(model)
        layers = {layer.name: layer for layer in trace(model, shape, batch_size).layers if not layer.name.startswith("<")}
        x = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0))
        prepared.append((model, x, {m: layers[path] for m, (path, _) in leaves.items() if path in layers}))
    plain: list[list[np.ndarray]] = [[] for _ in prepared]
    inside: list[dict[nn.Module, list[float]]] = [{m: [] for m in chosen} for _, _, chosen in prepared]
    per_round = min_run_time / rounds
    with timing_context(num_threads):
        for _ in range(rounds):
            for j, (model, x, chosen) in enumerate(prepared):
                for _ in range(3):
                    model(x)
                plain[j].append(time_calls(lambda: model(x), per_round, min_calls=5))
                hooks = _InSitu(list(chosen))
                try:
                    model(x)
                    passes = len(time_calls(lambda: model(x), per_round, min_calls=5)) + 1
                finally:
                    hooks.remove()
                for module, calls in hooks.calls.items():
                    if len(calls) == passes:  # called once per forward pass
                        inside[j][module] += calls[1:]
    stats = [{**summary(times), "num_threads": num_threads, "batch_size": batch_size} for times in plain]
    return stats, inside, [chosen for _, _, chosen in prepared]


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
    local_cpu = target_id.target == CPU
    pooled: list[dict[nn.Module, list[float]]] = [{} for _ in records]
    layers: list[dict[nn.Module, Layer]] = [{} for _ in records]
    for s in range(2):
        order = list(range(len(records)))
        random.Random(seed + 7 + s).shuffle(order)  # each session interleaves in its own order
        progress(f"measuring {len(records)} models{' and their layers in context' if local_cpu else ''}, "
                 f"session {s + 1} of 2")  # fmt: skip
        entries = [inference_models[i] for i in order]
        if local_cpu:  # rounds a pass apart: some catch the fast mode
            results, inside, chosen = time_with_context(entries, target_id.batch_size, target_id.num_threads,
                                                        plan.model_seconds, 5)  # fmt: skip
            for i, calls, described in zip(order, inside, chosen):
                layers[i] = described
                for module, times in calls.items():
                    pooled[i].setdefault(module, []).extend(times)
        else:
            results = measure_interleaved(entries, target_id.target, target_id.batch_size, target_id.num_threads,
                                          min_run_time=plan.model_seconds, rounds=5)  # fmt: skip
        session = [None] * len(records)
        for i, result in zip(order, results):
            session[i] = result
        sessions.append(session)
    for i, record in enumerate(records):
        record["sessions"] = [
            {k: v for k, v in sessions[s][i].items() if k.endswith("_ms")}
            for s in range(2)
        ]
        if local_cpu:
            record["in_context"] = [
                {"layer": layers[i][module].to_json(), "ms": float(np.percentile(times, LAYER_QUANTILE)) * 1e3}
                for module, times in pooled[i].items() if times
            ]
    return records


def chain_records(target_id: TargetIdentity, plan: Plan, seed: int, progress: Progress = _quiet) -> list[dict[str, Any]]:
    """Random stacks of layers (:func:`nas.latency.sampling.sample_chain`), dense or sparse, converted as
    trials are, with their layers timed inside them: in-model samples on shapes and in contexts that
    no calibration family has, so the layer context is not learnt from the families alone."""
    from nas.latency.features import trace
    from nas.sparse.inference import to_inference

    rng = random.Random(seed + 3)
    entries, params = [], []
    for i in range(3 * plan.models_per_family):
        torch.manual_seed(seed + 50_000 + i)
        model, shape = sample_chain(rng)
        sparsify(model, rng, sample_sparsity(rng))
        params.append(trace(model, shape, target_id.batch_size).params)  # counted as for a zoo model
        inference, _ = to_inference(model, shape, batch_size=target_id.batch_size, num_threads=target_id.num_threads)
        entries.append((inference, shape))
    progress(f"timing the layers of {len(entries)} random layer stacks inside them")
    _, inside, layers = time_with_context(entries, target_id.batch_size, target_id.num_threads, 2 * plan.model_seconds, 5)
    chains = []
    for count, calls, described in zip(params, inside, layers):
        chains.append({"params": count, "in_context": [
            {"layer": described[m].to_json(), "ms": float(np.percentile(t, LAYER_QUANTILE)) * 1e3}
            for m, t in calls.items() if t
        ]})  # fmt: skip
    return chains


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
    plan: Plan | None = None,
    timer: ModelTimer | None = None,
    identity: TargetIdentity | None = None,
) -> dict[str, Any]:
    """Measure, fit and (with ``save``) store a predictor; returns a summary.

    Without ``timer``: this machine's ``target`` in PyTorch eager, layers timed alone and whole models
    converted by the inference converter (see the module docstring). With a ``timer`` (any
    :class:`~nas.latency.timers.ModelTimer`: local ONNX Runtime, or a target's agents), everything is
    timed through it as whole models: layer samples as one-layer models, then zoo models (see
    :func:`calibrate_with_timer`); ``identity`` names what was measured (default: this machine's CPU
    under the timer's runtime).

    Returns ``{"identity", "meta", "paths", "predictor", "data", "accuracy"}``: ``accuracy`` has
    ``within_10``, ``spearman`` and ``noise_ceiling_within_10`` (cross-validated over the measured
    models, each measured twice) and ``held_out_families_within_10``. ``paths`` is empty unless ``save``.
    """
    plan = plan or (Plan.quick() if quick else Plan.full())
    named = {"quick": Plan.quick(), "medium": Plan.medium(), "full": Plan.full()}
    mode = next((name for name, known in named.items() if known == plan), "custom")
    if timer is not None:
        target_id = identity or timer_identity(timer, num_threads, batch_size)
        predictor, data = calibrate_with_timer(timer, target_id, plan, seed, progress, statistic, mode)
        return _finish(predictor, data, target_id, save, statistic, None)
    target_id = _local_identity(target, num_threads, batch_size)
    started = time.perf_counter()
    progress(f"calibrating {target_id.key()} ({mode})")
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
    chains = chain_records(target_id, plan, seed, progress) if target == CPU else []
    predictor.fit_context([(Layer.from_json(x["layer"]), x["ms"], r["trace"]["params"])
                           for r in records for x in r.get("in_context", [])]
                          + [(Layer.from_json(x["layer"]), x["ms"], c["params"])
                             for c in chains for x in c["in_context"]])  # fmt: skip
    traces = [Trace.from_json(r["trace"]) for r in records]
    predictor.fit_correction(traces, [truth(r, statistic) for r in records])
    predictor.reference_ms = reference_ms
    predictor.meta = _meta(mode, len(layer_samples), len(records), statistic, started, seed, TORCH)
    data = {
        "format": DATA_FORMAT,
        "identity": target_id.as_dict(),
        "constants": constants,
        "reference_ms": reference_ms,
        "meta": {**predictor.meta, "layer_minutes": round(layer_minutes, 2)},
        "layers": [{"config": c, "layer": layer.to_json(), "ms": ms} for c, layer, ms in layer_samples],
        "models": records,
        "chains": chains,
    }
    return _finish(predictor, data, target_id, save, statistic, reference_ms)


def _finish(predictor: Predictor, data: dict[str, Any], target_id: TargetIdentity, save: bool, statistic: str,
            reference_ms: float | None) -> dict[str, Any]:  # fmt: skip
    from nas.latency.evaluate import accuracy_summary

    paths = {}
    if save:
        paths["predictor"] = str(store.save_predictor(predictor))
        data_path = store.path_for("data", target_id)
        store.write_json(data_path, data)
        paths["data"] = str(data_path)
        if reference_ms is not None:
            store.save_reference_timing(
                TargetIdentity(target_id.target, target_id.device, target_id.num_threads, 1, target_id.torch),
                reference_ms,
            )  # fmt: skip
    return {"identity": target_id.as_dict(), "meta": predictor.meta, "paths": paths, "predictor": predictor,
            "data": data, "accuracy": accuracy_summary(data, statistic)}  # fmt: skip


def _meta(mode: str, layers: int, models: int, statistic: str, started: float, seed: int, runtime: str) -> dict[str, Any]:
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": mode,
        "layer_samples": layers,
        "models": models,
        "statistic": statistic,
        "calibration_minutes": round((time.perf_counter() - started) / 60, 2),
        "seed": seed,
        "runtime": runtime,
    }


def timer_identity(timer: ModelTimer, num_threads: int = 1, batch_size: int = 1) -> TargetIdentity:
    """This machine's identity under a local timer's runtime (an agent's caller passes its own)."""
    if timer.runtime == TORCH:
        return _local_identity(CPU, num_threads, batch_size)
    return TargetIdentity(timer.runtime, cpu_model(), num_threads, batch_size, torch_version())


def timer_layer_configs(plan: Plan, batch_size: int, rng: random.Random, runtime: str) -> list[dict[str, Any]]:
    """Layer samples for a timer: every kind, less the CSR ones where the runtime has no sparse kernel, and
    adaptive pooling only onto sizes that divide the input (what ONNX export takes)."""
    configs = sample_layers(plan, batch_size, rng)
    if not runtime.startswith("torch"):
        configs = [c for c in configs if not c["kind"].startswith("csr")]
    for config in configs:
        if config["kind"] == "pool" and config["op"].startswith("Adaptive"):
            config["hw"] = max(config["out"], config["hw"] // config["out"] * config["out"])
    return configs


EMPTY_MODELS = 4  # one-layer samples' times include the runtime's per-call cost, measured on empty models


def calibrate_with_timer(
    timer: ModelTimer,
    target_id: TargetIdentity,
    plan: Plan,
    seed: int = 0,
    progress: Progress = _quiet,
    statistic: str = "p10_ms",
    mode: str = "custom",
) -> tuple[Predictor, dict[str, Any]]:
    """A predictor for ``timer``'s runtime, and the calibration data, from whole-model timings only.

    1. Layer samples as one-layer models, timed together with a few empty models (identity): a
       layer's time is its model's minus the median empty model's, the runtime's fixed per-call cost.
    2. Zoo models, converted as the runtime deploys them (shrunk; dense under ONNX Runtime; under a
       local :class:`~nas.latency.timers.TorchTimer` the converter's kernels, timed here; a remote
       torch gets the masked model and converts it itself), timed in two sessions of interleaved
       rounds in different orders; they fit the whole-model correction, and the two sessions give
       the noise ceiling.
    """
    from nas.latency.api import prepare_trace
    from nas.sparse.inference import to_inference
    from nas.sparse.masks import prunable_weights

    started = time.perf_counter()
    runtime = timer.runtime
    rng = random.Random(seed)
    configs = timer_layer_configs(plan, target_id.batch_size, rng, runtime)
    built = [module_sample(config, seed + i) for i, config in enumerate(configs)]
    empty = [(_Empty(), (8,)) for _ in range(EMPTY_MODELS)]
    progress(f"timing {len(built)} one-layer models ({runtime})")
    stats = timer.time(empty + [(m, shape) for m, shape, _ in built], target_id.batch_size, target_id.num_threads,
                       plan.layer_seconds * LAYER_ROUNDS, LAYER_ROUNDS)  # fmt: skip
    overhead = float(np.median([s[statistic] for s in stats[:EMPTY_MODELS]]))
    layer_samples = [
        (config, layer, max(s[statistic] - overhead, 0.02 * s[statistic]))
        for config, (_, _, layer), s in zip(configs, built, stats[EMPTY_MODELS:])
    ]
    layer_minutes = (time.perf_counter() - started) / 60
    constants = dict(DEFAULT_CONSTANTS)
    predictor = Predictor.fit_layers(target_id, isolated(layer_samples), constants, runtime)
    predictor.meta["overhead_ms"] = overhead

    rng = random.Random(seed + 1)
    records, models = [], []
    for f, family in enumerate(FAMILIES):
        for i in range(plan.models_per_family):
            drawn = sample(family, rng, sample_sparsity(rng), seed=seed + 1000 * f + i)
            if isinstance(timer, TorchTimer):  # converted here, kernels timed on this machine
                deployed, decisions = to_inference(
                    drawn.model, drawn.input_shape, batch_size=target_id.batch_size, num_threads=target_id.num_threads,
                    target=timer.target,
                )  # fmt: skip
                kernels = {d["name"]: d["kernel"] for d in decisions}
            elif runtime.startswith("torch"):  # a remote torch converts it and times its kernels there
                deployed, kernels = drawn.model, {}
            else:
                kernels = dict.fromkeys(prunable_weights(drawn.model), "dense")
                deployed, _ = to_inference(drawn.model, drawn.input_shape, kernels=kernels)
            traced = prepare_trace(drawn.model, drawn.input_shape, target_id.batch_size)
            densities = [layer.alt.x["density"] for layer in traced.layers if layer.alt is not None]
            records.append({
                "family": family, "config": drawn.config, "trace": traced.to_json(), "kernels": kernels,
                "min_density": min(densities, default=1.0), "sparse": drawn.config["sparsity"]["pattern"] != "dense",
            })  # fmt: skip
            models.append((deployed, drawn.input_shape))
    sessions = []
    for s in range(2):
        order = list(range(len(models)))
        random.Random(seed + 7 + s).shuffle(order)
        progress(f"timing {len(models)} models ({runtime}), session {s + 1} of 2")
        results = timer.time([models[i] for i in order], target_id.batch_size, target_id.num_threads,
                             plan.model_seconds * 5, 5)  # fmt: skip
        session: list[dict[str, float]] = [{}] * len(models)
        for i, result in zip(order, results):
            session[i] = {k: v for k, v in result.items() if k.endswith("_ms")}
        sessions.append(session)
    for i, record in enumerate(records):
        record["sessions"] = [sessions[0][i], sessions[1][i]]
    traces = [Trace.from_json(r["trace"]) for r in records]
    predictor.fit_correction(traces, [truth(r, statistic) for r in records])
    predictor.meta = {**_meta(mode, len(layer_samples), len(records), statistic, started, seed, runtime),
                      "overhead_ms": overhead}  # fmt: skip
    data_meta = {**predictor.meta, "layer_minutes": round(layer_minutes, 2)}
    data = {
        "format": DATA_FORMAT,
        "identity": target_id.as_dict(),
        "constants": constants,
        "reference_ms": None,
        "meta": data_meta,
        "layers": [{"config": c, "layer": layer.to_json(), "ms": ms} for c, layer, ms in layer_samples],
        "models": records,
    }
    return predictor, data


class _Empty(nn.Module):
    """A model that only passes its input on: the runtime's fixed cost per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0

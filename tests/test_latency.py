"""Latency measurement, features, roofline, predictor storage, predict and refine (nas.latency)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas.latency import (
    NoPredictor,
    TargetUnavailable,
    UnsupportedLayer,
    available_targets,
    describe_targets,
    measure,
    measure_interleaved,
    observe,
    predict,
    predict_details,
    record,
    refine,
    use_observations,
)
from nas.latency.features import KINDS, PATTERNS, csr_alternative, sparsity_pattern, trace
from nas.latency.predictor import FORMAT_VERSION, Correction, Predictor
from nas.latency.roofline import Baselines, roofline_seconds
from nas.timing.targets import identity
from nas.sparse.magnitude import MagnitudePruning

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(autouse=True)
def nas_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps its predictors, observations and reference timings in its own NAS_HOME."""
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


class ConvGRU(nn.Module):
    """A plain CNN with a GRU head, from no search space."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.gru = nn.GRU(32 * 7, 64, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).permute(0, 3, 1, 2).flatten(2)
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def zero_weights(model: nn.Module, fraction: float, seed: int = 0) -> None:
    """Zero ``fraction`` of every weight matrix at random (no masks, just zeros)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "weight" in name and parameter.dim() >= 2:
                parameter.mul_((torch.rand(parameter.shape, generator=generator) >= fraction).float())


# -- measurement ----------------------------------------------------------------------------------


def test_measure_reports_quantiles_and_restores_threads_and_mode() -> None:
    model = mlp().train()
    threads = torch.get_num_threads()
    result = measure(model, (1, 8, 8), batch_size=4, num_threads=1, min_run_time=0.05)
    assert {"median_ms", "iqr_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms", "min_ms", "runs", "rounds"} <= set(result)
    assert 0 < result["min_ms"] <= result["p10_ms"] <= result["p25_ms"] <= result["p75_ms"] <= result["p90_ms"]
    assert result["iqr_ms"] >= 0 and result["rounds"] == 3
    assert result["runs"] >= 30 and result["batch_size"] == 4 and result["num_threads"] == 1
    assert torch.get_num_threads() == threads and model.training


def test_measure_times_masked_models() -> None:
    model = mlp()
    sparsifier = MagnitudePruning(MagnitudePruning.Params(prune_at=0.0))
    sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=1, layer_sparsity=None)
    assert measure(model, (1, 8, 8), min_run_time=0.05)["median_ms"] > 0


def test_measure_rejects_unknown_targets() -> None:
    with pytest.raises(ValueError, match="unknown latency target 'tpu'; valid: cpu"):
        measure(mlp(), (1, 8, 8), target="tpu")


def test_interleaved_measurement_normalises_by_the_reference_model() -> None:
    results = measure_interleaved([(mlp(), (1, 8, 8)), (ConvGRU(), (1, 28, 28))], min_run_time=0.03, rounds=2)
    assert len(results) == 2
    for result in results:
        assert result["normalized_ms"] > 0 and result["reference_ms"] > 0 and result["rounds"] == 2
        assert result["normalized_p10_ms"] <= result["normalized_ms"] * 1.5


# -- targets --------------------------------------------------------------------------------------


def test_targets_describe_this_machine() -> None:
    names = available_targets()
    assert names[0] == "cpu" and ("cuda" in names) == torch.cuda.is_available()
    entry = describe_targets()[0]
    assert entry["name"] == "cpu" and entry["device"] and "num_threads" in entry["params_schema"]["properties"]
    key = identity("cpu", num_threads=2, batch_size=8).key()
    assert key.startswith("cpu-") and "-t2-b8-torch" in key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_is_refused_without_a_gpu() -> None:
    from nas.latency.cuda import to_semi_structured

    with pytest.raises(TargetUnavailable, match="'cuda' is not available on this machine"):
        predict(mlp(), (1, 8, 8), target="cuda")
    with pytest.raises(TargetUnavailable, match="not available"):
        measure(mlp(), (1, 8, 8), target="cuda")
    with pytest.raises(TargetUnavailable, match="not available"):
        to_semi_structured(mlp())


# -- features and roofline ------------------------------------------------------------------------


def test_trace_describes_every_layer_with_shapes_and_flops() -> None:
    traced = trace(ConvGRU(), (1, 28, 28))
    kinds = [layer.kind for layer in traced.layers]
    assert kinds[:8] == ["conv", "norm", "elementwise", "pool", "conv", "elementwise", "pool", "elementwise"]
    assert "rnn" in kinds and kinds[-1] == "linear"
    conv = traced.layers[0].x
    assert (conv["cin"], conv["cout"], conv["h"], conv["ho"], conv["kh"]) == (1, 16, 28, 28, 3)
    assert conv["flops"] == 2 * 16 * 28 * 28 * 1 * 9
    grouped = traced.layers[4].x
    assert grouped["groups"] == 4 and grouped["cin_per_group"] == 4 and grouped["flops"] == 2 * 32 * 14 * 14 * 4 * 9
    rnn = next(layer for layer in traced.layers if layer.kind == "rnn").x
    assert (rnn["steps"], rnn["batch"], rnn["input"], rnn["hidden"], rnn["gates"]) == (7, 1, 224, 64, 3)
    assert rnn["flops"] == 2 * 3 * 64 * (224 + 64) * 7
    functional = [layer.name for layer in traced.layers if layer.name.startswith("<fn:")]
    assert any("permute" in name for name in functional) and any("flatten" in name for name in functional)
    head = traced.layers[-1].x
    assert (head["m"], head["k"], head["n"], head["flops"]) == (1, 64, 10, 2 * 64 * 10)
    assert head["bytes"] == 4 * (64 + 64 * 10 + 10)


def test_trace_scales_with_batch_size() -> None:
    one, eight = trace(mlp(), (1, 8, 8), 1), trace(mlp(), (1, 8, 8), 8)
    assert eight.layers[1].x["m"] == 8 and eight.layers[1].x["flops"] == 8 * one.layers[1].x["flops"]


def test_sparse_layers_get_a_csr_alternative_with_their_pattern() -> None:
    model = mlp()
    zero_weights(model, 0.9)
    traced = trace(model, (1, 8, 8), alternatives=True)
    alt = traced.layers[1].alt
    assert alt is not None and alt.kind == "csr_linear"
    assert alt.x["nnz"] == float(torch.count_nonzero(model[1].weight))
    assert abs(alt.x["density"] - 0.1) < 0.03 and alt.x["flops"] == 2 * alt.x["nnz"]
    dense = trace(mlp(), (1, 8, 8), alternatives=True)
    assert all(layer.alt is None for layer in dense.layers)  # no zeros, nothing to gain from CSR
    overridden = trace(mlp(), (1, 8, 8), alternatives=True, densities={"1.weight": 0.05})
    assert overridden.layers[1].alt.x["nnz"] == round(0.05 * 64 * 128) and overridden.layers[3].alt is None


def test_sparsity_patterns() -> None:
    weight = torch.randn(8, 16)
    nm = weight * torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(4)
    assert sparsity_pattern(nm)[0] == PATTERNS["nm"]
    rows = weight.clone()
    rows[2] = 0
    assert sparsity_pattern(rows)[0] == PATTERNS["rows"]
    assert sparsity_pattern(weight * (torch.rand(8, 16) > 0.9))[0] in (PATTERNS["unstructured"], PATTERNS["rows"])


def test_inference_models_are_traced_with_their_csr_kernels() -> None:
    from nas.sparse.inference import to_inference

    model = mlp()
    zero_weights(model, 0.95)
    inference, _ = to_inference(model, (1, 8, 8), kernels={"1.weight": "csr", "3.weight": "dense"})
    kinds = [layer.kind for layer in trace(inference, (1, 8, 8)).layers]
    assert "csr_linear" in kinds and "linear" in kinds


def test_unknown_layers_are_named() -> None:
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    model = nn.Sequential(nn.Linear(4, 4), Scale())
    with pytest.raises(UnsupportedLayer, match=r"layer '1'.*Scale is not a layer type the latency predictor knows"):
        trace(model, (4,))
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attention(x, x, x)[0]

    with pytest.raises(UnsupportedLayer, match=r"layer 'attention'.*MultiheadAttention computes with parameters"):
        predict(Attention(), (3, 8))


def test_roofline_is_the_slower_of_compute_and_memory() -> None:
    constants = {"peak_flops": 1e9, "bandwidth": 1e8}
    assert roofline_seconds(2e9, 1e6, constants) == pytest.approx(2.0)
    assert roofline_seconds(1e3, 1e8, constants) == pytest.approx(1.0)
    layer = trace(mlp(), (1, 8, 8)).layers[1]
    assert csr_alternative(layer, torch.ones(128, 64)) is None  # no zeros


def test_baselines_recover_a_linear_cost() -> None:
    rng = random.Random(0)
    traces, latencies = [], []
    for _ in range(12):
        widths = [rng.randint(8, 256) for _ in range(2)]
        model = nn.Sequential(nn.Linear(32, widths[0]), nn.ReLU(), nn.Linear(widths[0], widths[1]))
        traced = trace(model, (32,))
        flops = sum(layer.x.get("flops", 0.0) for layer in traced.layers)
        traces.append(traced)
        latencies.append(0.01 + flops / 1e9)  # 10 µs plus 1 GFLOP/s
    baselines = Baselines({"peak_flops": 1e10, "bandwidth": 1e10}).fit(traces, latencies)
    assert np.allclose(baselines.flops(traces), latencies, rtol=0.02)
    assert np.all(baselines.roofline(traces) > 0)


# -- the predictor: fitting and storage -----------------------------------------------------------


def synthetic_predictor() -> Predictor:
    """Layer models fitted on synthetic times (5 µs + 1 ns per FLOP) of every layer kind."""
    from nas.latency.sampling import SAMPLED_KINDS, build, sample_config

    rng = random.Random(0)
    samples = []
    for kind in SAMPLED_KINDS:
        for i in range(30):
            _, layer = build(sample_config(kind, rng, max_flops=2e6), i)
            samples.append((layer, 0.005 + layer.x.get("flops", 0.0) * 1e-6 + layer.x.get("bytes", 0.0) * 1e-8))
    return Predictor.fit_layers(identity(), samples, {"peak_flops": 1e10, "bandwidth": 1e10})


@pytest.fixture(scope="module")
def fitted() -> Predictor:
    torch.set_num_threads(1)
    return synthetic_predictor()


def test_predictor_round_trips_through_json(fitted: Predictor, tmp_path: Path) -> None:
    from nas.latency import store

    traces = [trace(ConvGRU(), (1, 28, 28), alternatives=True), trace(mlp(), (1, 8, 8), alternatives=True)]
    before = [p.latency_ms for p in fitted.predict_traces(traces)]
    text = fitted.dumps()
    data = json.loads(text)
    assert data["format"] == "nas-latency-predictor" and data["format_version"] == FORMAT_VERSION == 2
    assert data["identity"]["target"] == "cpu" and data["meta"]["id"]
    assert set(data["kinds"]) == set(KINDS) - {"linear"} | {"linear"}
    assert "tree" in data["kinds"]["conv"]["lightgbm"]  # LightGBM's own text format, not a pickle
    path = store.save_predictor(Predictor.loads(text), tmp_path / "p.json")
    loaded = store.load_predictor_file(path)
    assert [p.latency_ms for p in loaded.predict_traces(traces)] == pytest.approx(before, rel=1e-9)
    assert loaded.id == data["meta"]["id"]


def test_predictor_files_are_checked(fitted: Predictor) -> None:
    data = fitted.to_json()
    with pytest.raises(ValueError, match="not a latency predictor"):
        Predictor.from_json({**data, "format": "pickle"})
    with pytest.raises(ValueError, match="format version 99"):
        Predictor.from_json({**data, "format_version": 99})


def test_layer_models_follow_their_training_data(fitted: Predictor) -> None:
    layers = trace(ConvGRU(), (1, 28, 28)).layers
    times = fitted.layer_times(layers)
    expected = np.array([0.005 + l.x.get("flops", 0.0) * 1e-6 + l.x.get("bytes", 0.0) * 1e-8 for l in layers])
    assert np.all(times > 0)
    assert np.median(np.abs(times / expected - 1)) < 0.25


def test_correction_fits_a_model_level_bias() -> None:
    features = np.random.default_rng(0).normal(size=(40, 10))
    correction = Correction.fit(features, np.full(40, math.log(1.5)))
    assert correction(features) == pytest.approx(np.full(40, math.log(1.5)), abs=1e-6)
    assert Correction.from_json(correction.to_json()).intercept == pytest.approx(math.log(1.5))


# -- predict and refine, with the bundled predictor ------------------------------------------------


def test_predict_a_cnn_with_a_gru_head_with_90_percent_zeros() -> None:
    model = ConvGRU().eval()
    zero_weights(model, 0.9)
    details = predict_details(model, (1, 28, 28))
    assert details["latency_ms"] > 0 and math.isfinite(details["latency_ms"])
    assert details["predictor"]["source"] == "bundled"
    names = {layer["name"] for layer in details["layers"]}
    assert {"features.0", "features.4", "gru", "head"} <= names
    assert all(layer["kernel"] in ("dense", "csr") for layer in details["layers"])
    assert predict(model, (1, 28, 28)) == pytest.approx(details["latency_ms"])  # the rescale was cached


def test_predict_with_densities_for_masks_not_made_yet() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 10)).eval()
    dense = predict_details(model, (1, 28, 28))
    sparse = predict_details(model, (1, 28, 28), densities=0.02)
    assert all(layer["kernel"] == "dense" for layer in dense["layers"])
    assert sparse["layers"][1]["kernel"] == "csr"  # 98% sparse: the CSR product wins on any CPU
    assert 0 < sparse["latency_ms"] < dense["latency_ms"]
    channel = predict_details(model, (1, 28, 28), densities={"1.weight": 0.25}, pattern="channel")
    assert 0 < channel["latency_ms"] < dense["latency_ms"]  # a quarter of the units: smaller dense layers
    assert predict(ConvGRU(), (1, 28, 28), densities=0.1) > 0
    with pytest.raises(ValueError, match=r"densities name unknown weights \['nope.weight'\]"):
        predict(model, (1, 28, 28), densities={"nope.weight": 0.5})
    with pytest.raises(ValueError, match=r"densities must be in \(0, 1\]"):
        predict(model, (1, 28, 28), densities=1.5)


def test_predict_masked_and_inference_models_alike() -> None:
    from nas.sparse.inference import to_inference

    model = mlp()
    sparsifier = MagnitudePruning(MagnitudePruning.Params(prune_at=0.0, sparsity=0.95))
    sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=1, layer_sparsity=None)
    masked = predict(model, (1, 8, 8))
    kernels = {name: "csr" for name in ("1.weight", "3.weight")}
    inference, _ = to_inference(model, (1, 8, 8), kernels=kernels)
    assert predict(inference, (1, 8, 8)) > 0 and masked > 0
    assert predict(model, (1, 8, 8), kernels=kernels) == pytest.approx(predict(inference, (1, 8, 8)), rel=0.25)


def test_refine_records_observations_and_moves_predictions(nas_home: Path) -> None:
    model = mlp().eval()
    before = predict(model, (1, 8, 8))
    for _ in range(6):
        result = refine(model, (1, 8, 8), "cpu", measured_ms=before * 3)
    assert result["observations"] == 6 and result["measured_ms"] == pytest.approx(before * 3)
    observations = list((nas_home / "latency" / "observations").glob("*.jsonl"))
    assert len(observations) == 1 and len(observations[0].read_text().splitlines()) == 6
    assert predict(model, (1, 8, 8)) > 1.5 * before
    with pytest.raises(ValueError, match="measured_ms must be a positive number"):
        refine(model, (1, 8, 8), "cpu", measured_ms=-1.0)


def test_observations_made_apart_reach_the_predictor_through_the_database(nas_home: Path, tmp_path: Path) -> None:
    """As on a cluster: ``observe`` where the model ran writes nothing; the predictions of a process
    pointed at the database follow what was recorded there, refitted when an observation arrives."""
    from nas.store import Store, make_engine, upgrade
    from nas.store.observations import StoreObservations

    model = mlp().eval()
    own = predict_details(model, (1, 8, 8))
    observations = [observe(model, (1, 8, 8), "cpu", measured_ms=own["latency_ms"] * 3) for _ in range(5)]
    assert not (nas_home / "latency" / "observations").exists()
    assert observations[0]["predicted_ms"] == pytest.approx(own["latency_ms"])
    assert observations[0]["predictor_id"] == own["predictor"]["id"]
    assert predict(model, (1, 8, 8)) == pytest.approx(own["latency_ms"])

    engine = make_engine(f"sqlite:///{tmp_path / 'nas.db'}")
    upgrade(engine)
    store = Store(engine)
    use_observations(StoreObservations(store))
    try:
        assert predict(model, (1, 8, 8)) == pytest.approx(own["latency_ms"])  # nothing recorded yet
        for observation in observations:
            store.add_latency_observation(observation)
        moved = predict_details(model, (1, 8, 8))
        assert moved["latency_ms"] > 1.5 * own["latency_ms"] and moved["correction"] != own["correction"]
        record(observe(model, (1, 8, 8), "cpu", measured_ms=own["latency_ms"] * 3))
        assert len(store.latency_observations(observations[0]["target_key"], own["predictor"]["id"])) == 6
        assert predict(model, (1, 8, 8)) > moved["latency_ms"]  # the new one was refitted on at once
    finally:
        use_observations(None)
    assert not (nas_home / "latency" / "observations").exists()
    assert predict(model, (1, 8, 8)) == pytest.approx(own["latency_ms"])  # the files again, which hold none


def test_no_predictor_for_a_target_without_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nas.latency import store

    monkeypatch.setattr(store, "BUNDLED_DIR", tmp_path / "nothing")
    with pytest.raises(NoPredictor, match="run `nas hardware calibrate --target cpu`"):
        predict(mlp(), (1, 8, 8))


def test_shrink_plan_matches_the_converters_shrinking() -> None:
    from nas.latency.shrinkage import shrink_plan
    from nas.latency.zoo import FAMILIES, sample
    from nas.sparse.shrink import shrink
    from nas.sparse.inference import plain_copy

    def summary(traced: object) -> list[tuple[object, ...]]:
        return [
            (layer.name, layer.kind, tuple(layer.x.get(k) for k in ("k", "n", "cin", "cout", "elements", "elements_in")),
             layer.alt.x["nnz"] if layer.alt else None)
            for layer in traced.layers
        ]  # fmt: skip

    rng = random.Random(7)
    for i in range(24):
        drawn = sample(FAMILIES[i % len(FAMILIES)], rng, {"pattern": "unstructured", "density": 0.05}, seed=i)
        planned = trace(drawn.model, drawn.input_shape, alternatives=True, shrink=shrink_plan(drawn.model))
        real = plain_copy(drawn.model).eval()
        shrink(real, drawn.input_shape)
        assert summary(planned) == summary(trace(real, drawn.input_shape, alternatives=True)), drawn.family

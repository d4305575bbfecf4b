"""A predictor that transfers (ratio to an analytic cost) and ONNX Runtime as a measured runtime."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas.latency.calibrate import Plan, calibrate, timer_layer_configs
from nas.latency.features import Layer, trace
from nas.latency.predictor import KindModel, Predictor
from nas.latency.roofline import DEFAULT_CONSTANTS
from nas.latency.timers import ModelTimer, OnnxTimer, TorchTimer, module_to_onnx, run_onnx
from nas.latency.zoo import sample
from nas.sparse.inference import to_inference
from nas.sparse.masks import set_mask
from nas.timing.targets import identity

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PROTOCOL_KEYS = {"p10_ms", "median_ms", "iqr_ms", "p25_ms", "p75_ms", "p90_ms", "min_ms", "runs", "rounds"}


@pytest.fixture(autouse=True)
def nas_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _linear(k: int, n: int) -> Layer:
    x = {"m": 1.0, "k": float(k), "n": float(n), "bias": 1.0, "functional": 0.0, "semi_structured": 0.0,
         "flops": 2.0 * k * n, "bytes": 4.0 * (k + k * n + n)}  # fmt: skip
    return Layer(f"fc{k}x{n}", "linear", x)


def _law(layer: Layer) -> float:
    """A machine's Linear: 4 µs per call plus its bytes at 20 GB/s (milliseconds)."""
    return 0.004 + layer.x["bytes"] / 20e9 * 1e3


def test_ratio_model_extrapolates_past_the_largest_calibrated_layer() -> None:
    """Calibrated on layers up to 1024 wide, a 784 -> 4096 layer is predicted near the law's time: trees
    predict the ratio to the analytic base, and a ratio carries over where an absolute time cannot."""
    rng = random.Random(0)
    layers = [_linear(int(np.exp(rng.uniform(np.log(4), np.log(1024)))),
                      int(np.exp(rng.uniform(np.log(4), np.log(1024))))) for _ in range(200)]  # fmt: skip
    noisy = [_law(layer) * float(np.exp(rng.gauss(0, 0.03))) for layer in layers]
    model = KindModel.fit("linear", [{**layer.x, "roofline": 0.0} for layer in layers], noisy)
    for k, n in ((784, 2500), (784, 4096), (4096, 4096)):
        wide = _linear(k, n)
        ratio = float(model.predict([{**wide.x, "roofline": 0.0}])[0]) / _law(wide)
        assert 0.8 < ratio < 1.25, (k, n, ratio)


def _masked_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    weight = model[1].weight.detach()
    set_mask(model[1], "weight", weight.abs() >= weight.abs().flatten().kthvalue(int(0.9 * weight.numel())).values)
    return model


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("which", ["masked", "csr_inference", "recurrent", "zoo_cnn"])
def test_module_to_onnx_runs_in_onnxruntime_and_matches_torch(which: str) -> None:
    if which == "masked":
        model, shape = _masked_mlp(), (1, 8, 8)
    elif which == "csr_inference":
        model, shape = to_inference(_masked_mlp(), (1, 8, 8), kernels={"1.weight": "csr", "3.weight": "dense"})[0], (1, 8, 8)
        assert any(type(m).__name__ == "CSRLinear" for m in model.modules())
    elif which == "recurrent":
        torch.manual_seed(0)
        model, shape = _Recurrent().eval(), (5, 8)
    else:
        drawn = sample("cnn", random.Random(3), {"pattern": "unstructured", "density": 0.2}, seed=3)
        model, shape = drawn.model, drawn.input_shape
    onnx_bytes = module_to_onnx(model, shape)
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(run_onnx(onnx_bytes, x.numpy()), expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # exporting a copy left the model (and its mask parametrizations) intact
        assert model(torch.zeros(1, *shape)).shape[0] == 1


def test_onnx_timer_gives_protocol_statistics() -> None:
    timer: ModelTimer = OnnxTimer()
    assert isinstance(timer, ModelTimer) and timer.runtime == "onnxruntime"
    models = [(_masked_mlp(), (1, 8, 8)), (nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU()), (1, 8, 8))]
    stats = timer.time(models, batch_size=2, num_threads=1, min_run_time=0.05, rounds=2)
    assert len(stats) == 2
    for result in stats:
        assert PROTOCOL_KEYS <= set(result)
        assert 0 < result["min_ms"] <= result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
        assert result["rounds"] == 2 and result["batch_size"] == 2
    torch_stats = TorchTimer().time(models, 1, 1, 0.05, 2)
    assert TorchTimer().runtime == "torch" and all(PROTOCOL_KEYS <= set(r) for r in torch_stats)


def test_onnxruntime_layer_samples_have_no_sparse_kernels() -> None:
    configs = timer_layer_configs(Plan.quick(), 1, random.Random(0), "onnxruntime")
    kinds = {c["kind"] for c in configs}
    assert not any(kind.startswith("csr") for kind in kinds) and {"linear", "conv", "rnn"} <= kinds
    assert any(c["kind"].startswith("csr") for c in timer_layer_configs(Plan.quick(), 1, random.Random(0), "torch"))


def _tiny_plan() -> Plan:
    return Plan(
        {"linear": 8, "conv": 8, "csr_linear": 4, "csr_conv": 4, "rnn": 6, "norm": 4, "pool": 4, "elementwise": 8},
        layer_seconds=0.01, adaptive_rounds=0, adaptive_fraction=0.1, neighbours=1, neighbour_cap=1,
        models_per_family=2, model_seconds=0.01, max_flops=2e6,
    )  # fmt: skip


def test_calibrate_through_a_timer_fits_an_onnxruntime_predictor_without_files(nas_home: Path) -> None:
    """The agents' path: any ModelTimer, save=False; the predictor and its accuracy come back, nothing is
    written, and under onnxruntime sparsity buys nothing (no CSR form is chosen) while shrinking does."""
    outcome = calibrate(timer=OnnxTimer(), plan=_tiny_plan(), save=False, seed=2)
    assert outcome["paths"] == {} and not (nas_home / "latency").exists()
    accuracy = outcome["accuracy"]
    assert accuracy["models"] == 12
    assert 0 <= accuracy["within_10"] <= 1 and 0 <= accuracy["noise_ceiling_within_10"] <= 1
    assert -1 <= accuracy["spearman"] <= 1
    predictor = Predictor.from_json(json.loads(json.dumps(outcome["predictor"].to_json())))
    assert predictor.runtime == "onnxruntime" and predictor.identity.target == "onnxruntime"
    assert not any(kind.startswith("csr") for kind in predictor.kinds)

    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    sparse = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    sparse.load_state_dict(dense.state_dict())
    set_mask(sparse[1], "weight", torch.rand(512, 64, generator=torch.Generator().manual_seed(0)) < 0.05)
    [on_dense, on_sparse] = predictor.predict_traces(
        [trace(dense, (1, 8, 8), alternatives=True), trace(sparse, (1, 8, 8), alternatives=True)]
    )
    assert on_sparse.latency_ms == pytest.approx(on_dense.latency_ms)
    assert all(layer["kernel"] == "dense" for layer in on_sparse.layers)


class _Twice(nn.Module):
    """One layer called twice per pass: its calls cannot be told apart, so it gives no in-model sample."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 32)
        self.act = nn.ReLU()
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(self.fc(x))))


def test_layers_are_timed_inside_their_model() -> None:
    from nas.latency.calibrate import time_with_context

    sequential = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    stats, inside, layers = time_with_context([(sequential, (1, 8, 8)), (_Twice().eval(), (32,))], 1, 1, 0.05, 2)
    assert all(PROTOCOL_KEYS <= set(s) for s in stats)
    assert sorted(layer.name for layer in layers[0].values()) == ["0", "1", "2", "3"]
    assert all(len(calls) >= 10 and min(calls) > 0 for calls in inside[0].values())
    timed = {layers[1][module].name for module, calls in inside[1].items() if calls}
    assert timed == {"act", "head"}  # fc runs twice a pass


def test_layer_context_scales_layers_to_their_time_inside_a_model() -> None:
    """A context fitted on layers that run 1.5x slower inside models scales a prediction by about 1.5x."""
    rng = random.Random(1)
    layers = [_linear(rng.randint(16, 1024), rng.randint(16, 1024)) for _ in range(60)]
    predictor = Predictor.fit_layers(identity(), [(layer, _law(layer)) for layer in layers], dict(DEFAULT_CONSTANTS))
    model = nn.Sequential(nn.Linear(256, 512), nn.Linear(512, 64)).eval()
    before = predictor.predict_traces([trace(model, (256,))])[0].sum_ms
    predictor.fit_context([(layer, 1.5 * _law(layer), 1e5) for layer in layers])
    after = predictor.predict_traces([trace(model, (256,))])[0].sum_ms
    assert 1.35 < after / before < 1.65


def test_onnxruntime_fusions_are_free() -> None:
    from nas.latency.predictor import fused_away

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10),
                          nn.ReLU()).eval()  # fmt: skip
    layers = trace(model, (3, 8, 8)).layers
    names = [layer.name for layer, fused in zip(layers, fused_away(layers)) if fused]
    assert names == ["1", "2"]  # BatchNorm folded into the conv, its ReLU fused; the ReLU after the Linear is not


class _RemoteTorch:
    """A timer for a torch runtime elsewhere (as agents are): it times what it is sent, here with PyTorch."""

    runtime = "torch"

    def __init__(self) -> None:
        self.sent: list[nn.Module] = []

    def time(self, models, batch_size, num_threads, min_run_time, rounds):  # type: ignore[no-untyped-def]
        self.sent += [module for module, _ in models]
        return TorchTimer().time(models, batch_size, num_threads, min_run_time, rounds)


def test_a_remote_torch_runtime_gets_the_masked_models_to_convert_itself() -> None:
    """Only a local TorchTimer converts models here (timing kernels on this machine); a remote torch
    runtime converts them on its own device, so it is sent the masked models."""
    from torch.nn.utils import parametrize

    timer = _RemoteTorch()
    outcome = calibrate(timer=timer, plan=_tiny_plan(), save=False, seed=4)
    assert isinstance(timer, ModelTimer) and outcome["predictor"].runtime == "torch"
    models = timer.sent[-12:]  # the second session's zoo models
    assert any(parametrize.is_parametrized(m) for model in models for m in model.modules())
    assert not any(type(m).__name__.startswith("CSR") for model in models for m in model.modules())

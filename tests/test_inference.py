"""Sparse inference: converted models compute the same function, with per-layer kernels decided by measurement."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.sparse.csr import CSRConv2d, CSRLinear
from nas.sparse.base import Sparsifier
from nas.sparse.channel import ChannelPruning
from nas.sparse.inference import KERNELS, to_inference
from nas.sparse.magnitude import MagnitudePruning
from nas.sparse.masks import masks, prunable_weights, set_mask
from nas.sparse.serialization import load_model, save_model
from nas.specs import JobSpec
from nas.training import load_dataset, load_trained_model, run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DIGITS = (1, 8, 8)


def mlp() -> nn.Sequential:
    """LeNet-300-100 on 8x8 digits."""
    return nn.Sequential(
        OrderedDict(
            [("flatten", nn.Flatten()), ("fc0", nn.Linear(64, 300)), ("act0", nn.ReLU()), ("fc1", nn.Linear(300, 100)),
             ("act1", nn.ReLU()), ("out", nn.Linear(100, 10))]
        )
    )  # fmt: skip


def cnn() -> nn.Sequential:
    """Plain, depthwise and grouped convolutions with BatchNorm, pooling and a Linear head."""
    return nn.Sequential(
        OrderedDict(
            [("conv0", nn.Conv2d(1, 8, 3, padding=1)), ("bn0", nn.BatchNorm2d(8)), ("act0", nn.ReLU()),
             ("conv1", nn.Conv2d(8, 16, 3, padding=1)), ("bn1", nn.BatchNorm2d(16)), ("act1", nn.ReLU()),
             ("pool", nn.MaxPool2d(2)), ("conv2", nn.Conv2d(16, 16, 1)), ("act2", nn.ReLU()),
             ("depthwise", nn.Conv2d(16, 16, 3, padding=1, groups=16)), ("grouped", nn.Conv2d(16, 16, 3, groups=4)),
             ("act3", nn.ReLU()), ("flatten", nn.Flatten()), ("fc", nn.Linear(16 * 2 * 2, 32)), ("act4", nn.ReLU()),
             ("out", nn.Linear(32, 10))]
        )
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", {}, data_dir)
    return torch.from_numpy(data.x_train), torch.from_numpy(data.y_train), torch.from_numpy(data.x_test)


def trained(
    build: Callable[[], nn.Module], sparsifier: Sparsifier, digits: tuple[torch.Tensor, ...], epochs: int = 2
) -> nn.Module:
    """``build()`` trained on digits with Adam under ``sparsifier``'s hooks, in eval mode."""
    torch.manual_seed(0)
    model = build()
    x, y, _ = digits
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sparsifier.attach(model, optimizer, epochs * math.ceil(len(x) / 64), None)
    step = 0
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            step += 1
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            sparsifier.on_after_backward(model, step)
            optimizer.step()
            sparsifier.on_step(model, step)
    sparsifier.finalize(model)
    return model.eval()


def magnitude(sparsity: float) -> MagnitudePruning:
    return MagnitudePruning(MagnitudePruning.Params(sparsity=sparsity))


def channel(sparsity: float) -> ChannelPruning:
    return ChannelPruning(ChannelPruning.Params(sparsity=sparsity, criterion="bn"))


def max_error(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def everywhere(model: nn.Module, kernel: str) -> dict[str, str]:
    return dict.fromkeys(prunable_weights(model), kernel)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
@pytest.mark.parametrize(("build", "layer_type"), [(mlp, CSRLinear), (cnn, CSRConv2d)], ids=["mlp", "cnn"])
def test_conversion_computes_the_same_function_with_either_kernel(build, layer_type, sparsity: float, digits) -> None:
    model = trained(build, magnitude(sparsity), digits)
    x_test = digits[2]
    for kernel in ("dense", "csr"):
        converted, decisions = to_inference(model, DIGITS, batch_size=16, kernels=everywhere(model, kernel))
        for batch in (x_test[:1], x_test[:16], x_test):
            assert max_error(model, converted, batch) <= 1e-5
        csr_layers = [m for m in converted.modules() if isinstance(m, (CSRLinear, CSRConv2d))]
        if kernel == "dense":
            assert csr_layers == [] and {d["kernel"] for d in decisions} <= {"dense", "shrunk"}
        else:  # every layer that has a CSR path takes it; grouped convolutions stay dense
            assert {d["name"]: d["kernel"] for d in decisions if d["kernel"] != "csr"} == (
                {"depthwise.weight": "dense", "grouped.weight": "dense"} if build is cnn else {}
            )
            assert len(csr_layers) == len(decisions) - (2 if build is cnn else 0)
            assert any(isinstance(m, layer_type) for m in csr_layers)


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(3, 5, 1), nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Conv2d(3, 5, (3, 2), dilation=2, padding=(2, 0)),
     nn.Conv2d(3, 5, 3, stride=(2, 1), padding=2, bias=False)],
    ids=["1x1", "stride2", "dilated", "no-bias"],
)  # fmt: skip
def test_csr_layers_match_their_dense_layer_for_any_geometry_and_batch(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    linear = nn.Linear(7, 4)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 9, 11)
        with torch.no_grad():
            assert torch.allclose(CSRConv2d(conv)(x), conv(x), atol=1e-6)
    sequence = torch.randn(2, 5, 7)  # Linear's leading dimensions are kept
    with torch.no_grad():
        assert torch.allclose(CSRLinear(linear)(sequence), linear(sequence), atol=1e-6)


def test_decisions_are_measured_for_every_prunable_weight_and_leave_the_model_alone(digits) -> None:
    model = trained(mlp, magnitude(0.98), digits)
    with torch.no_grad():
        expected = model(digits[2])
    converted, decisions = to_inference(model, DIGITS, batch_size=64, min_run_time=0.01)

    assert [d["name"] for d in decisions] == list(prunable_weights(model)) == ["fc0.weight", "fc1.weight", "out.weight"]
    for d in decisions:
        assert d["kernel"] in KERNELS and d["dense_ms"] > 0 and d["chosen_ms"] > 0
        assert (d["kernel"] == "dense") == (d["chosen_ms"] == d["dense_ms"])  # the original layer's own time
    assert not any(parametrize.is_parametrized(m) for m in converted.modules())
    assert not any(p.requires_grad for p in converted.parameters())
    assert max_error(model, converted, digits[2]) <= 1e-5
    # the trained model keeps its masks and its function
    assert set(masks(model)) == {"fc0.weight", "fc1.weight", "out.weight"}
    with torch.no_grad():
        assert torch.equal(model(digits[2]), expected)


def test_a_channel_pruned_trial_reloads_from_safetensors_as_smaller_linear_layers(data_dir: Path, digits) -> None:
    job = JobSpec(
        search_space={"name": "sparse_mlp"},
        dataset={"name": "digits"},
        sparsifier={"name": "channel", "params": {"sparsity": 0.75}},
        training={"epochs": 2, "batch_size": 32, "lr": 3e-3},
    )
    arch = {"depth": 2, "width_0": 128, "width_1": 64, "activation": "gelu"}
    outcome = run_trial(job, arch, data_dir, lambda epoch, metrics: None)
    model = load_trained_model(outcome.model_bytes)
    converted, decisions = to_inference(model, DIGITS, batch_size=8, min_run_time=0.01)

    linears = [m for m in converted.modules() if isinstance(m, nn.Linear)]
    csr = [m for m in converted.modules() if isinstance(m, CSRLinear)]
    widths = [(m.in_features, m.out_features) for m in sorted(linears + csr, key=lambda m: m.in_features, reverse=True)]
    assert widths == [(64, 32), (32, 16), (16, 10)]  # 128 * 0.25, 64 * 0.25 units survive; the classifier keeps 10
    assert [d["kernel"] for d in decisions] == ["shrunk", "shrunk", "shrunk"]  # no zeros left for CSR to skip
    assert max_error(model, converted, digits[2]) <= 1e-5


def test_a_channel_pruned_cnn_loses_channels_wherever_that_is_exact(digits) -> None:
    model = trained(cnn, channel(0.5), digits, epochs=3)
    converted, decisions = to_inference(model, DIGITS, kernels=everywhere(model, "dense"))
    kernels = {d["name"]: d["kernel"] for d in decisions}

    # conv1 feeds an unpadded 1x1 conv: its 8 pruned channels go, their constant folded into conv2's bias
    assert (converted.conv1.out_channels, converted.bn1.num_features, converted.conv2.in_channels) == (8, 8, 8)
    # fc feeds the classifier: its 16 pruned neurons go
    assert (converted.fc.out_features, converted.out.in_features) == (16, 16)
    # conv0 feeds a padded conv: only channels whose constant is exactly zero after BatchNorm and ReLU may go
    assert 4 <= converted.conv0.out_channels <= 8
    # grouped and depthwise convolutions keep their channels
    assert [converted.get_submodule(n).out_channels for n in ("conv2", "depthwise", "grouped")] == [16, 16, 16]
    assert kernels["conv1.weight"] == kernels["fc.weight"] == kernels["conv2.weight"] == "shrunk"
    assert kernels["out.weight"] == "shrunk"  # its input columns went
    assert max_error(model, converted, digits[2]) <= 1e-5


def test_dead_units_fold_their_constant_only_where_it_is_the_same_everywhere() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )  # fmt: skip
    dead = torch.ones(4, 1, 3, 3)
    dead[:2] = 0
    set_mask(model[0], "weight", dead)
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([-1.0, 1.0, 0.3, 0.3]))  # ReLU(-1) = 0; ReLU(1) = 1 meets padding
        model[2].bias.copy_(torch.tensor([0.5, 0.2, -0.1, 0.7]))
    set_mask(model[2], "weight", torch.ones(4, 4, 3, 3).index_fill_(0, torch.tensor([3]), 0))

    converted, _ = to_inference(model, DIGITS, kernels=everywhere(model, "dense"))
    # channel 0 (constant 0) goes; channel 1 (constant 1, but zero padding at the border) stays
    assert converted[0].out_channels == 3 and converted[2].in_channels == 3
    # conv1's channel 3 outputs tanh(0.7) everywhere: the Linear after Flatten absorbs it
    assert converted[2].out_channels == 3 and converted[5].in_features == 3 * 64
    assert max_error(model, converted, torch.randn(5, *DIGITS)) <= 1e-5


def test_stored_kernels_rebuild_the_same_model_from_safetensors_without_timing(digits) -> None:
    model = trained(mlp, magnitude(0.95), digits)
    kernels = {"fc0.weight": "csr", "fc1.weight": "shrunk", "out.weight": "dense"}
    converted, decisions = to_inference(model, DIGITS, kernels=kernels)

    restored = mlp()
    load_model(restored, save_model(model, {}))
    rebuilt, again = to_inference(restored, DIGITS, kernels={d["name"]: d["kernel"] for d in decisions})
    assert again == decisions and all(d["dense_ms"] is None for d in again)
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in converted.modules()]
    with torch.no_grad():
        assert torch.equal(rebuilt(digits[2]), converted(digits[2]))
    # the inference model's own state (CSR weights included) is plain tensors: it saves as safetensors too
    state = safetensors.torch.load(safetensors.torch.save(converted.state_dict()))
    assert "fc0.csr.values" in state
    copy.deepcopy(rebuilt).load_state_dict(state)


def test_recurrent_weights_stay_dense_and_are_listed() -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(8, 16, batch_first=True)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    model = Tagger()
    MagnitudePruning(MagnitudePruning.Params(prune_at=0.0, sparsity=0.9)).attach(model, None, 1, None)
    converted, decisions = to_inference(model, (5, 8), batch_size=4, min_run_time=0.01)
    assert [(d["name"], d["kernel"], d["dense_ms"]) for d in decisions[:2]] == [
        ("rnn.weight_ih_l0", "dense", None), ("rnn.weight_hh_l0", "dense", None),
    ]  # fmt: skip
    assert decisions[2]["name"] == "head.weight" and decisions[2]["dense_ms"] > 0
    assert max_error(model, converted, torch.randn(4, 5, 8)) <= 1e-5


def test_bad_requests_are_refused() -> None:
    model = mlp()
    with pytest.raises(ValueError, match="unknown latency target"):
        to_inference(model, DIGITS, target="tpu")
    with pytest.raises(ValueError, match=r"missing \['out.weight'\].*unknown kernels \['sparse'\]"):
        to_inference(model, DIGITS, kernels={"fc0.weight": "dense", "fc1.weight": "sparse"})

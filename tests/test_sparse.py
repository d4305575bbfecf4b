from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pytest
import safetensors.torch
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from nas.sparse.base import Sparsifier, WeightSpec
from nas.sparse.magnitude import MagnitudePruning
from nas.sparse.masks import (
    get_mask,
    magnitude_masks,
    masks,
    prunable_weights,
    raw_weight,
    set_mask,
    strip_masks,
    weight_kind,
)
from nas.sparse.serialization import load_model, read_metadata, save_model
from nas.sparse.stats import layer_report, model_stats, weight_densities, weight_sparsity
from tests.models import lenet

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise
        nn.Conv2d(4, 8, 3, padding=1, groups=2),  # grouped
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


class SeqNet(nn.Module):
    """A two-layer bidirectional recurrent classifier of (batch, 5, 8) sequences."""

    def __init__(self, cell: type[nn.RNNBase], seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.rnn = cell(8, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "linear": (lambda seed=0: lenet(64, seed), (64,)),
    "conv2d": (small_cnn, (1, 8, 8)),
    "lstm": (lambda seed=0: SeqNet(nn.LSTM, seed), (5, 8)),
    "gru": (lambda seed=0: SeqNet(nn.GRU, seed), (5, 8)),
}


def prune(model: nn.Module, layer_sparsity: dict[str, float] | None = None, **params: object) -> MagnitudePruning:
    sparsifier = MagnitudePruning(MagnitudePruning.Params(prune_at=0.0, **params))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier.attach(model, optimizer, total_steps=10, layer_sparsity=layer_sparsity)
    return sparsifier


def zeros(weight: torch.Tensor) -> int:
    return weight.numel() - int(torch.count_nonzero(weight))


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, input_shape: tuple[int, ...] = (64,)
) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, *input_shape, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def effective(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: getattr(module, attr) for name, (module, attr) in prunable_weights(model).items()}


# --- masks -------------------------------------------------------------------------------------


def test_prunable_weights_cover_linear_conv_and_every_rnn_weight_but_no_bias() -> None:
    assert list(prunable_weights(lenet())) == ["fc0.weight", "fc1.weight", "out.weight"]
    assert list(prunable_weights(small_cnn())) == ["0.weight", "2.weight", "3.weight", "5.weight"]
    names = list(prunable_weights(SeqNet(nn.LSTM)))
    assert names == [
        "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l0_reverse", "rnn.weight_hh_l0_reverse",
        "rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.weight_ih_l1_reverse", "rnn.weight_hh_l1_reverse",
        "head.weight",
    ]  # fmt: skip
    assert [weight_kind(m) for m in (nn.Linear(1, 1), nn.Conv2d(1, 1, 1), nn.LSTM(1, 1), nn.GRU(1, 1), nn.RNN(1, 1))] == [
        "linear", "conv2d", "lstm", "gru", "rnn",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="ReLU has no prunable weights"):
        weight_kind(nn.ReLU())


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    ],
    ids=["adamw", "adam", "sgd-momentum"],
)
@pytest.mark.parametrize("kind", MODELS)
def test_masked_weights_stay_exactly_zero_under_momentum_and_weight_decay(kind: str, make_optimizer) -> None:
    build, input_shape = MODELS[kind]
    model = build()
    optimizer = make_optimizer(model.parameters())  # built before the masks, as the trainer does
    train_steps(model, optimizer, 10, input_shape)  # momentum and Adam moments are nonzero everywhere now
    prune(model, sparsity=0.8)
    before = {name: w.detach().clone() for name, w in effective(model).items()}
    train_steps(model, optimizer, 60, input_shape)
    for name, (module, attr) in prunable_weights(model).items():
        weight, mask = getattr(module, attr), get_mask(module, attr).bool()
        assert torch.all(weight[~mask] == 0), name
        assert zeros(weight) == round(0.8 * weight.numel()), name
        assert not torch.equal(weight[mask], before[name][mask]), f"{name}: kept weights stopped training"
        assert torch.all(raw_weight(module, attr).grad[~mask] == 0), name
    # the forward pass uses the masked weights: recomputing with explicitly masked plain weights agrees
    x = torch.randn(4, *input_shape)
    expected = model(x)
    assert torch.equal(strip_masks(model)(x), expected)


def test_set_mask_replaces_an_earlier_mask_and_checks_its_shape() -> None:
    layer = nn.Linear(4, 3)
    set_mask(layer, "weight", torch.tensor([[1, 0, 1, 1]] * 3))
    set_mask(layer, "weight", torch.tensor([[0, 1, 1, 1]] * 3))
    assert len(layer.parametrizations.weight) == 1
    assert torch.all(layer.weight[:, 0] == 0) and torch.all(layer.weight[:, 2:] != 0)
    assert masks(nn.Sequential(layer)).keys() == {"0.weight"}
    with pytest.raises(ValueError, match=r"mask shape \(4, 3\) does not match weight shape \(3, 4\)"):
        set_mask(layer, "weight", torch.ones(4, 3))


def test_get_mask_reads_any_parametrization_that_exposes_a_mask() -> None:
    class Scores(nn.Module):  # a method's own parametrization, e.g. HYDRA's, with a computed mask
        def __init__(self, shape: torch.Size) -> None:
            super().__init__()
            self.scores = nn.Parameter(torch.randn(shape))

        @property
        def mask(self) -> torch.Tensor:
            return (self.scores.abs() >= self.scores.abs().median()).float()

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return weight * self.mask

    model = lenet(16)
    parametrize.register_parametrization(model.fc1, "weight", Scores(model.fc1.weight.shape))
    assert masks(model).keys() == {"fc1.weight"}
    assert torch.equal(get_mask(model.fc1, "weight"), model.fc1.parametrizations.weight[0].mask)
    assert get_mask(model.fc0, "weight") is None
    assert raw_weight(model.fc1, "weight") is model.fc1.parametrizations.weight.original


def test_magnitude_masks_zero_the_smallest_entries_exactly_even_with_ties() -> None:
    weights = {"a": torch.tensor([[0.5, -0.1], [0.1, 3.0]]), "b": torch.tensor([0.1, -2.0, 0.0])}
    keep = magnitude_masks(weights, 0.6)  # round(0.6 * 7) = 4 of the 7 go: 0.0 and the three 0.1s
    assert keep["a"].tolist() == [[True, False], [False, True]] and keep["b"].tolist() == [False, True, False]
    assert magnitude_masks({}, 0.5) == {}


# --- magnitude pruning -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_layerwise_pruning_removes_exactly_the_smallest_weights_of_each_weight(kind: str) -> None:
    model = MODELS[kind][0]()
    dense = {name: w.detach().clone() for name, w in effective(model).items()}
    prune(model, sparsity=0.9)
    for name, (module, attr) in prunable_weights(model).items():
        kept, weight = get_mask(module, attr).bool(), getattr(module, attr)
        assert zeros(weight) == round(0.9 * weight.numel())
        assert dense[name][~kept].abs().max() <= dense[name][kept].abs().min()
        assert torch.equal(weight[kept], dense[name][kept])
    assert weight_sparsity(model) == pytest.approx(0.9, abs=0.01)


def test_global_pruning_uses_one_threshold_across_layers() -> None:
    model = lenet()
    with torch.no_grad():
        model.out.weight.add_(10 * model.out.weight.sign())  # the output layer's weights are now the largest
    dense = torch.cat([w.detach().flatten() for w in effective(model).values()])
    prune(model, sparsity=0.9, scope="global")
    assert weight_sparsity(model) == pytest.approx(0.9, abs=0.01)
    masked = torch.cat([mask.flatten() for mask in masks(model).values()]).bool()
    assert dense[~masked].abs().max() <= dense[masked].abs().min()
    assert zeros(model.out.weight) == 0 and zeros(model.fc0.weight) / model.fc0.weight.numel() > 0.9


def test_per_weight_targets_override_the_default_in_both_scopes() -> None:
    model = lenet()
    prune(model, {"fc0.weight": 0.5, "out.weight": 0.0}, sparsity=0.9)
    assert weight_densities(model) == {"fc0.weight": 0.5, "fc1.weight": pytest.approx(0.1), "out.weight": 1.0}

    model = lenet()
    prune(model, {"fc0.weight": 0.5}, sparsity=0.8, scope="global")
    assert zeros(model.fc0.weight) == round(0.5 * 300 * 784)
    rest = zeros(model.fc1.weight) + zeros(model.out.weight)
    assert rest == round(0.8 * (300 * 100 + 100 * 10))


def test_unknown_weight_targets_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\['fc0'\]"):
        prune(lenet(), {"fc0": 0.5})  # a module name, not a weight name


def test_pruning_happens_after_the_requested_fraction_of_steps() -> None:
    model = lenet(in_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = MagnitudePruning(MagnitudePruning.Params(sparsity=0.5, prune_at=0.5))
    sparsifier.attach(model, optimizer, total_steps=10, layer_sparsity=None)
    for step in range(1, 5):
        sparsifier.on_step(model, step)
        assert masks(model) == {}, f"pruned too early, at step {step}"
    sparsifier.on_step(model, 5)
    assert masks(model).keys() == {"fc0.weight", "fc1.weight", "out.weight"}
    assert weight_sparsity(model) == pytest.approx(0.5, abs=0.001)

    late = lenet(in_features=64)
    sparsifier = MagnitudePruning(MagnitudePruning.Params(prune_at=1.0))
    sparsifier.attach(late, torch.optim.SGD(late.parameters(), lr=0.1), total_steps=10, layer_sparsity=None)
    sparsifier.finalize(late)  # training stopped before step 10: finalize still prunes
    assert weight_sparsity(late) == pytest.approx(0.9, abs=0.001)


def test_magnitude_params_are_validated() -> None:
    assert MagnitudePruning.Params().model_dump() == {"sparsity": 0.9, "scope": "layer", "prune_at": 0.5}
    for bad in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"scope": "channel"}, {"prune_at": 1.5}, {"target": 0.5}):
        with pytest.raises(ValidationError):
            MagnitudePruning.Params(**bad)


# --- the contract's defaults -------------------------------------------------------------------


def test_default_check_refuses_unsupported_kinds_at_the_name() -> None:
    class LinearOnly(Sparsifier):
        supported_kinds = frozenset({"linear"})

    weights = [
        WeightSpec("fc0.weight", "linear", frozenset({64})),
        WeightSpec("conv.weight", "conv2d", frozenset({3}), kernel_size=9),
        WeightSpec("rnn.weight_hh_l0", "lstm", frozenset({16})),
    ]
    assert LinearOnly(None).check(weights) == [
        (("name",), "conv.weight is a conv2d weight, which this sparsifier does not support (supported: linear)"),
        (("name",), "rnn.weight_hh_l0 is a lstm weight, which this sparsifier does not support (supported: linear)"),
    ]
    assert MagnitudePruning(MagnitudePruning.Params()).check(weights) == []
    assert Sparsifier(None).epoch_metrics(lenet(16)) == {} and Sparsifier(None).pattern_of("x") == "unstructured"


# --- statistics --------------------------------------------------------------------------------


def test_model_stats_of_lenet_dense_and_pruned() -> None:
    model = lenet()
    macs = 784 * 300 + 300 * 100 + 100 * 10
    assert model_stats(model, (1, 28, 28)) == {
        "params": macs + 300 + 100 + 10,
        "nonzero_params": macs + 410,  # random init: no weight is exactly zero
        "sparsity": 0.0,
        "flops": 2 * macs,
        "nonzero_flops": 2 * macs,
    }
    prune(model, sparsity=0.9)
    model.train()
    stats = model_stats(model, (1, 28, 28))
    nonzero_weights = sum(w - round(0.9 * w) for w in (784 * 300, 300 * 100, 100 * 10))
    assert stats["params"] == macs + 410  # masks are buffers, not parameters
    assert stats["nonzero_params"] == nonzero_weights + 410
    assert stats["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert stats["flops"] == 2 * macs and stats["nonzero_flops"] == 2 * nonzero_weights
    assert model.training  # the counting forward pass leaves the mode alone


def test_model_stats_count_convolutions_per_output_position() -> None:
    stats = model_stats(small_cnn(), (1, 8, 8))
    # conv: 8*8 positions * 4 out * 1 in * 9; depthwise: 8*8 * 4 * 1 * 9; grouped: 8*8 * 8 * 2 * 9; linear: 512 * 10
    assert stats["flops"] == 2 * (2304 + 2304 + 9216 + 5120)
    assert stats["params"] == (36 + 4) + (36 + 4) + (144 + 8) + (5120 + 10)


def test_model_stats_count_every_gate_of_a_recurrent_layer_once_per_time_step() -> None:
    model = SeqNet(nn.LSTM)
    # per direction: layer 0 has 4 gates * 16 units over 8 inputs + 16 recurrent; layer 1 over 32 inputs
    per_step = 2 * (64 * 8 + 64 * 16) + 2 * (64 * 32 + 64 * 16)
    stats = model_stats(model, (5, 8))
    assert stats["flops"] == 2 * (5 * per_step + 32 * 10)
    prune(model, {"head.weight": 0.0}, sparsity=0.75)
    assert model_stats(model, (5, 8))["nonzero_flops"] == 2 * (5 * per_step // 4 + 32 * 10)
    unbatched = nn.GRU(8, 16)  # (seq, features) input without a batch dimension
    assert model_stats(unbatched, (8,))["flops"] == 2 * (48 * 8 + 48 * 16)


def test_layer_report_lists_prunable_weights_with_density_and_pattern() -> None:
    class Labelled(MagnitudePruning):
        pattern = "test-pattern"

    model = small_cnn()
    sparsifier = Labelled(Labelled.Params(prune_at=0.0, sparsity=0.75))
    sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), 10, {"0.weight": 0.0, "2.weight": 0.5})
    expected = [
        {"name": "0.weight", "shape": [4, 1, 3, 3], "density": 1.0, "pattern": "dense"},
        {"name": "2.weight", "shape": [4, 1, 3, 3], "density": 0.5, "pattern": "test-pattern"},
        {"name": "3.weight", "shape": [8, 2, 3, 3], "density": 0.25, "pattern": "test-pattern"},
        {"name": "5.weight", "shape": [10, 512], "density": 0.25, "pattern": "test-pattern"},
    ]
    assert layer_report(model, sparsifier) == expected
    assert [entry["pattern"] for entry in layer_report(model)] == ["dense"] + ["unstructured"] * 3


# --- serialisation -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_save_load_round_trip_reproduces_outputs_and_masks_exactly(kind: str) -> None:
    build, input_shape = MODELS[kind]
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    prune(model, sparsity=0.7)
    train_steps(model, optimizer, 20, input_shape)  # the parameters under the masks drift; the saved weights must not
    data = save_model(model, {"arch": '{"depth": 2}', "note": "test"})

    tensors = safetensors.torch.load(data)
    assert not any("parametrizations" in key for key in tensors)
    for name, weight in effective(model).items():
        assert tensors[f"{name}_mask"].dtype == torch.bool
        assert torch.equal(tensors[name], weight.detach())
    assert read_metadata(data) == {"arch": '{"depth": 2}', "note": "test"}

    restored = build(seed=123)  # differently initialised
    load_model(restored, data)
    x = torch.randn(6, *input_shape)
    assert torch.equal(restored(x), model(x))
    assert masks(restored).keys() == masks(model).keys()
    for name, mask in masks(model).items():
        assert torch.equal(masks(restored)[name], mask)

    # The masks came back, not just the zeros: further training keeps them.
    train_steps(restored, torch.optim.Adam(restored.parameters(), lr=1e-2), 10, input_shape)
    assert weight_sparsity(restored) == pytest.approx(0.7, abs=0.001)


def test_load_model_rejects_a_different_architecture() -> None:
    model = lenet(in_features=64)
    prune(model)
    data = save_model(model, {})
    unknown = r"model file masks \['fc0.weight', 'fc1.weight', 'out.weight'\], which the model does not have"
    with pytest.raises(ValueError, match=unknown):
        load_model(nn.Sequential(nn.Linear(64, 10)), data)
    deeper = nn.Sequential(OrderedDict([*lenet(in_features=64).named_children(), ("extra", nn.Linear(10, 10))]))
    with pytest.raises(ValueError, match=r"missing \['extra.bias', 'extra.weight'\]"):
        load_model(deeper, data)


def test_read_metadata_rejects_truncated_bytes() -> None:
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_metadata(b"\x00\x01")
    with pytest.raises(ValueError, match="header runs past the end"):
        read_metadata(save_model(nn.Linear(2, 2), {"a": "b"})[:20])


def test_strip_masks_leaves_plain_layers_with_the_same_function() -> None:
    model = SeqNet(nn.GRU)
    prune(model, sparsity=0.6)
    x = torch.randn(4, 5, 8)
    expected = model(x)
    strip_masks(model)
    assert masks(model) == {} and not parametrize.is_parametrized(model.rnn)
    assert torch.equal(model(x), expected)
    assert weight_sparsity(model) == pytest.approx(0.6, abs=0.001)

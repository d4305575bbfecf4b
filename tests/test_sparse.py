from __future__ import annotations

from collections import OrderedDict

import pytest
import safetensors.torch
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from nas.sparse.magnitude import MagnitudePruning
from nas.sparse.masks import get_mask, magnitude_masks, masks, prunable_layers, set_mask, strip_masks
from nas.sparse.serialization import load_model, read_metadata, save_model
from nas.sparse.stats import layer_report, model_stats, weight_sparsity

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def lenet(in_features: int = 784, seed: int = 0) -> nn.Sequential:
    """LeNet-300-100 with the layer names the search space uses."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [
                ("flatten", nn.Flatten()),
                ("fc0", nn.Linear(in_features, 300)),
                ("act0", nn.ReLU()),
                ("fc1", nn.Linear(300, 100)),
                ("act1", nn.ReLU()),
                ("out", nn.Linear(100, 10)),
            ]
        )
    )


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


def prune(model: nn.Module, layer_sparsity: dict[str, float] | None = None, **params: object) -> MagnitudePruning:
    sparsifier = MagnitudePruning(MagnitudePruning.Params(prune_at=0.0, **params))
    sparsifier.attach(model, total_steps=10, layer_sparsity=layer_sparsity)
    return sparsifier


def zeros(weight: torch.Tensor) -> int:
    return weight.numel() - int(torch.count_nonzero(weight))


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, in_features: int = 64) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, in_features, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


# --- masks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    ],
    ids=["adamw", "adam", "sgd-momentum"],
)
def test_masked_weights_stay_exactly_zero_under_momentum_and_weight_decay(make_optimizer) -> None:
    model = lenet(in_features=64)
    optimizer = make_optimizer(model.parameters())  # built before the masks, as the trainer does
    train_steps(model, optimizer, 20)  # momentum and Adam moments are nonzero everywhere now
    prune(model, sparsity=0.8)
    before = {name: layer.weight.detach().clone() for name, layer in prunable_layers(model).items()}
    train_steps(model, optimizer, 200)
    for name, layer in prunable_layers(model).items():
        mask = get_mask(layer).bool()
        assert torch.all(layer.weight[~mask] == 0), name
        assert zeros(layer.weight) == round(0.8 * layer.weight.numel())
        assert not torch.equal(layer.weight[mask], before[name][mask]), f"{name}: kept weights stopped training"
        assert torch.all(layer.parametrizations.weight.original.grad[~mask] == 0)


def test_set_mask_replaces_an_earlier_mask_and_checks_its_shape() -> None:
    layer = nn.Linear(4, 3)
    set_mask(layer, torch.tensor([[1, 0, 1, 1]] * 3))
    set_mask(layer, torch.tensor([[0, 1, 1, 1]] * 3))
    assert len(layer.parametrizations.weight) == 1
    assert torch.all(layer.weight[:, 0] == 0) and torch.all(layer.weight[:, 2:] != 0)
    assert masks(nn.Sequential(layer)).keys() == {"0"}
    with pytest.raises(ValueError, match=r"mask shape \(4, 3\) does not match weight shape \(3, 4\)"):
        set_mask(layer, torch.ones(4, 3))


def test_magnitude_masks_zero_the_smallest_entries_exactly_even_with_ties() -> None:
    weights = {"a": torch.tensor([[0.5, -0.1], [0.1, 3.0]]), "b": torch.tensor([0.1, -2.0, 0.0])}
    keep = magnitude_masks(weights, 0.6)  # round(0.6 * 7) = 4 of the 7 go: 0.0 and the three 0.1s
    assert keep["a"].tolist() == [[True, False], [False, True]] and keep["b"].tolist() == [False, True, False]
    assert magnitude_masks({}, 0.5) == {}


# --- magnitude pruning -------------------------------------------------------------------------


def test_layerwise_pruning_removes_exactly_the_smallest_weights_of_each_layer() -> None:
    model = lenet()
    dense = {name: layer.weight.detach().clone() for name, layer in prunable_layers(model).items()}
    prune(model, sparsity=0.9)
    for name, layer in prunable_layers(model).items():
        kept = get_mask(layer).bool()
        assert zeros(layer.weight) == round(0.9 * layer.weight.numel())
        assert dense[name][~kept].abs().max() <= dense[name][kept].abs().min()
        assert torch.equal(layer.weight[kept], dense[name][kept])
    assert weight_sparsity(model) == pytest.approx(0.9, abs=0.01)


def test_global_pruning_uses_one_threshold_across_layers() -> None:
    model = lenet()
    with torch.no_grad():
        model.out.weight.add_(10 * model.out.weight.sign())  # the output layer's weights are now the largest
    dense = torch.cat([layer.weight.detach().flatten() for layer in prunable_layers(model).values()])
    prune(model, sparsity=0.9, scope="global")
    assert weight_sparsity(model) == pytest.approx(0.9, abs=0.01)
    masked = torch.cat([get_mask(layer).flatten() for layer in prunable_layers(model).values()]).bool()
    assert dense[~masked].abs().max() <= dense[masked].abs().min()
    assert zeros(model.out.weight) == 0 and zeros(model.fc0.weight) / model.fc0.weight.numel() > 0.9


def test_per_layer_targets_override_the_default_in_both_scopes() -> None:
    model = lenet()
    prune(model, {"fc0": 0.5, "out": 0.0}, sparsity=0.9)
    assert [entry["density"] for entry in layer_report(model)] == [0.5, pytest.approx(0.1), 1.0]

    model = lenet()
    prune(model, {"fc0": 0.5}, sparsity=0.8, scope="global")
    assert zeros(model.fc0.weight) == round(0.5 * 300 * 784)
    rest = zeros(model.fc1.weight) + zeros(model.out.weight)
    assert rest == round(0.8 * (300 * 100 + 100 * 10))


def test_unknown_layer_targets_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\['fc9'\]"):
        prune(lenet(), {"fc9": 0.5})


def test_pruning_happens_after_the_requested_fraction_of_steps() -> None:
    model = lenet(in_features=64)
    sparsifier = MagnitudePruning(MagnitudePruning.Params(sparsity=0.5, prune_at=0.5))
    sparsifier.attach(model, total_steps=10, layer_sparsity=None)
    for step in range(1, 5):
        sparsifier.on_step(model, step)
        assert masks(model) == {}, f"pruned too early, at step {step}"
    sparsifier.on_step(model, 5)
    assert masks(model).keys() == {"fc0", "fc1", "out"}
    assert weight_sparsity(model) == pytest.approx(0.5, abs=0.001)

    late = lenet(in_features=64)
    sparsifier = MagnitudePruning(MagnitudePruning.Params(prune_at=1.0))
    sparsifier.attach(late, total_steps=10, layer_sparsity=None)
    sparsifier.finalize(late)  # training stopped before step 10: finalize still prunes
    assert weight_sparsity(late) == pytest.approx(0.9, abs=0.001)


def test_magnitude_params_are_validated() -> None:
    assert MagnitudePruning.Params().model_dump() == {"sparsity": 0.9, "scope": "layer", "prune_at": 0.5}
    for bad in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"scope": "channel"}, {"prune_at": 1.5}, {"target": 0.5}):
        with pytest.raises(ValidationError):
            MagnitudePruning.Params(**bad)


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
    # conv: 8*8 positions * 4 out * 1 in * 9; depthwise: 8*8 * 4 * 1 * 9; linear: 256 * 10
    assert stats["flops"] == 2 * (2304 + 2304 + 2560)
    assert stats["params"] == (36 + 4) + (36 + 4) + (2560 + 10)


def test_layer_report_lists_prunable_layers_with_density_and_pattern() -> None:
    model = small_cnn()
    prune(model, {"0": 0.0, "2": 0.5}, sparsity=0.75)
    assert layer_report(model) == [
        {"name": "0", "shape": [4, 1, 3, 3], "density": 1.0, "pattern": "dense"},
        {"name": "2", "shape": [4, 1, 3, 3], "density": 0.5, "pattern": "unstructured"},
        {"name": "4", "shape": [10, 256], "density": 0.25, "pattern": "unstructured"},
    ]


# --- serialisation -----------------------------------------------------------------------------


def test_save_load_round_trip_reproduces_outputs_and_masks_exactly() -> None:
    model = lenet(in_features=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    prune(model, sparsity=0.7)
    train_steps(model, optimizer, 30)  # the parameters under the masks drift; the saved weights must not
    data = save_model(model, {"arch": '{"depth": 2}', "note": "test"})

    tensors = safetensors.torch.load(data)
    assert not any("parametrizations" in key for key in tensors)
    assert tensors["fc0.weight_mask"].dtype == torch.bool
    assert torch.equal(tensors["fc0.weight"], model.fc0.weight.detach())
    assert read_metadata(data) == {"arch": '{"depth": 2}', "note": "test"}

    restored = lenet(in_features=64, seed=123)  # differently initialised
    load_model(restored, data)
    x = torch.randn(16, 64)
    assert torch.equal(restored(x), model(x))
    for name, mask in masks(model).items():
        assert torch.equal(get_mask(restored.get_submodule(name)), mask)

    # The masks came back, not just the zeros: further training keeps them.
    train_steps(restored, torch.optim.Adam(restored.parameters(), lr=1e-2), 10)
    assert weight_sparsity(restored) == pytest.approx(0.7, abs=0.001)


def test_load_model_rejects_a_different_architecture() -> None:
    model = lenet(in_features=64)
    prune(model)
    data = save_model(model, {})
    with pytest.raises(ValueError, match=r"model file masks '\w+', which the model does not have"):
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
    model = lenet(in_features=64)
    prune(model, sparsity=0.6)
    x = torch.randn(4, 64)
    expected = model(x)
    strip_masks(model)
    assert not any(parametrize.is_parametrized(layer) for layer in prunable_layers(model).values())
    assert torch.equal(model(x), expected)
    assert weight_sparsity(model) == pytest.approx(0.6, abs=0.001)

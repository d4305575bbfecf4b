"""The magnitude sparsifier honours per-layer patterns: dense, unstructured, N:M and channel."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from nas.sparse.magnitude import MagnitudePruning, parse_pattern
from nas.sparse.masks import get_mask, magnitude_prune, masks, prunable_weights
from nas.sparse.stats import layer_report
from tests.models import lenet

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv0", nn.Conv2d(1, 8, 3, padding=1)),
                ("act0", nn.ReLU()),
                ("conv1", nn.Conv2d(8, 16, 3, padding=1)),
                ("act1", nn.ReLU()),
                ("flatten", nn.Flatten()),
                ("fc0", nn.Linear(16 * 8 * 8, 32)),
                ("act2", nn.ReLU()),
                ("out", nn.Linear(32, 10)),
            ]
        )
    )


def prune_now(model: nn.Module, patterns: dict[str, str] | None, layer_sparsity: dict[str, float] | None = None,
              **params: object) -> MagnitudePruning:  # fmt: skip
    """Prune ``model`` at attach time (prune_at=0) and return the sparsifier."""
    sparsifier = MagnitudePruning(MagnitudePruning.Params(prune_at=0.0, **params))
    sparsifier.layer_patterns = patterns
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier.attach(model, optimizer, 10, layer_sparsity)
    return sparsifier


def weight(model: nn.Module, name: str) -> torch.Tensor:
    module, attr = prunable_weights(model)[name]
    return getattr(module, attr).detach()


def test_each_layer_gets_its_pattern() -> None:
    model = convnet()
    before = {name: weight(model, name).clone() for name in prunable_weights(model)}
    patterns = {"conv0.weight": "channel", "conv1.weight": "2:4", "fc0.weight": "1:8", "out.weight": "dense"}
    sparsifier = prune_now(model, patterns, {"conv0.weight": 0.25}, sparsity=0.9)

    # dense: no mask, the weight untouched
    assert get_mask(model.out, "weight") is None
    assert torch.equal(weight(model, "out.weight"), before["out.weight"])

    # channel: whole output channels of smallest L1 norm are zero, the others untouched
    conv0 = weight(model, "conv0.weight")
    alive = conv0.flatten(1).ne(0).any(dim=1)
    assert int(alive.sum()) == 6  # round(0.25 * 8) channels removed
    norms = before["conv0.weight"].abs().flatten(1).sum(dim=1)
    assert norms[~alive].max() <= norms[alive].min()
    assert torch.equal(conv0[alive], before["conv0.weight"][alive])

    # N:M: exactly N nonzero in every group of M consecutive input channels, per (out, kh, kw); the largest kept
    conv1 = weight(model, "conv1.weight")
    groups = conv1.movedim(1, -1).unflatten(-1, (2, 4))  # (16, 3, 3, 2 groups, 4)
    assert torch.all(groups.ne(0).sum(dim=-1) == 2)
    dense_groups = before["conv1.weight"].abs().movedim(1, -1).unflatten(-1, (2, 4))
    kept = groups.ne(0)
    assert torch.all(dense_groups.masked_fill(~kept, float("inf")).amin(-1) >= dense_groups.masked_fill(kept, 0).amax(-1))
    fc0 = weight(model, "fc0.weight")
    assert torch.all(fc0.unflatten(1, (128, 8)).ne(0).sum(dim=-1) == 1)

    assert {name: sparsifier.pattern_of(name) for name in patterns} == patterns
    report = {layer["name"]: (layer["pattern"], layer["density"]) for layer in layer_report(model, sparsifier)}
    assert report == {
        "conv0.weight": ("channel", 0.75), "conv1.weight": ("2:4", 0.5), "fc0.weight": ("1:8", 0.125),
        "out.weight": ("dense", 1.0),
    }  # fmt: skip


def test_masks_hold_through_training_steps() -> None:
    model = convnet()
    sparsifier = prune_now(model, {"conv0.weight": "channel", "conv1.weight": "2:4", "out.weight": "dense"}, sparsity=0.5)
    saved = {name: mask.clone() for name, mask in masks(model).items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for step in range(1, 4):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 8, 8)).sum().backward()
        optimizer.step()
        sparsifier.on_step(model, step)
    sparsifier.finalize(model)
    for name, mask in saved.items():
        assert torch.all(weight(model, name)[mask == 0] == 0), name
    assert weight(model, "out.weight").ne(0).all()


def test_unstructured_layers_keep_the_exact_count_in_either_scope() -> None:
    model = lenet(64)
    prune_now(model, {"fc0.weight": "unstructured", "fc1.weight": "dense", "out.weight": "2:4"}, sparsity=0.75)
    assert int(weight(model, "fc0.weight").eq(0).sum()) == round(0.75 * 300 * 64)
    assert weight(model, "fc1.weight").ne(0).all()

    # global: one threshold over the unstructured layers only; patterned layers stay out of the pool
    model = lenet(64)
    reference = copy.deepcopy(model)
    patterns = {"fc0.weight": "unstructured", "fc1.weight": "unstructured", "out.weight": "dense"}
    prune_now(model, patterns, sparsity=0.6, scope="global")
    pooled = torch.cat([weight(reference, n).abs().flatten() for n in ("fc0.weight", "fc1.weight")])
    threshold = pooled.sort().values[round(0.6 * pooled.numel()) - 1]
    zeros = sum(int(weight(model, n).eq(0).sum()) for n in ("fc0.weight", "fc1.weight"))
    assert zeros == round(0.6 * pooled.numel())
    for name in ("fc0.weight", "fc1.weight"):
        assert torch.all(weight(reference, name).abs()[weight(model, name) == 0] <= threshold)
    assert weight(model, "out.weight").ne(0).all()


def test_a_layer_sparsity_override_applies_to_unstructured_and_channel_but_not_to_fixed_patterns() -> None:
    model = lenet(64)
    overrides = {"fc0.weight": 0.5, "fc1.weight": 0.3, "out.weight": 0.9}
    prune_now(model, {"fc0.weight": "unstructured", "fc1.weight": "channel", "out.weight": "1:4"}, overrides, sparsity=0.8)
    assert int(weight(model, "fc0.weight").eq(0).sum()) == 0.5 * 300 * 64
    assert int(weight(model, "fc1.weight").ne(0).any(dim=1).sum()) == 100 - 30
    assert float(weight(model, "out.weight").ne(0).float().mean()) == 0.25


def test_weights_without_a_pattern_are_unstructured_and_no_patterns_is_plain_magnitude_pruning() -> None:
    model = lenet(64)
    sparsifier = prune_now(model, {"out.weight": "dense"}, sparsity=0.9)
    assert sparsifier.pattern_of("fc0.weight") == "unstructured"
    assert int(weight(model, "fc0.weight").eq(0).sum()) == round(0.9 * 300 * 64)

    for scope in ("layer", "global"):
        model, reference = lenet(64), lenet(64)
        prune_now(model, None, {"out.weight": 0.2}, sparsity=0.7, scope=scope)
        magnitude_prune(reference, 0.7, {"out.weight": 0.2}, scope)
        assert masks(model).keys() == masks(reference).keys()
        assert all(torch.equal(masks(model)[n], masks(reference)[n]) for n in masks(model))


def test_recurrent_weights_take_patterns_too() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("lstm", nn.LSTM(8, 16, batch_first=True))]))
    prune_now(model, {"lstm.weight_ih_l0": "2:4", "lstm.weight_hh_l0": "dense"}, sparsity=0.5)
    assert torch.all(weight(model, "lstm.weight_ih_l0").unflatten(1, (2, 4)).ne(0).sum(-1) == 2)
    assert weight(model, "lstm.weight_hh_l0").ne(0).all()
    model(torch.randn(2, 5, 8))  # the masked LSTM still runs


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ({"fc9.weight": "dense"}, r"layer_patterns names weights the model does not have: \['fc9.weight'\]"),
        ({"fc0.weight": "blocky"}, r"layer_patterns\['fc0.weight'\]: unknown sparsity pattern 'blocky'"),
        ({"fc0.weight": "4:4"}, r"layer_patterns\['fc0.weight'\]: N:M pattern '4:4' needs 1 <= N < M"),
        ({"fc1.weight": "2:7"}, r"layer_patterns\['fc1.weight'\]='2:7': the weight has 300 input channels .* M=7"),
    ],
)
def test_bad_patterns_fail_at_attach_naming_the_weight(patterns: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prune_now(lenet(64), patterns)


def test_parse_pattern() -> None:
    assert [parse_pattern(p) for p in ("dense", "unstructured", "channel", "2:4", "1:16")] == [None, None, None, (2, 4), (1, 16)]
    for bad in ("", "2:", ":4", "0:4", "5:4", "2:128", " 2:4", "N:M"):
        with pytest.raises(ValueError):
            parse_pattern(bad)


def test_gradual_magnitude_pruning_follows_each_layers_pattern_along_its_schedule() -> None:
    """gmp: a channel layer loses whole channels step by step, N:M holds from t0, dense is never pruned."""
    from nas.sparse.gmp import GradualMagnitudePruning

    model = convnet()
    patterns = {"conv0.weight": "channel", "conv1.weight": "2:4", "fc0.weight": "unstructured", "out.weight": "dense"}
    sparsifier = GradualMagnitudePruning(GradualMagnitudePruning.Params(sparsity=0.75, start=0.0, end=1.0, frequency=1))
    sparsifier.layer_patterns = patterns
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier.attach(model, optimizer, 20, {"conv0.weight": 0.5, "out.weight": 0.0})

    def dead_channels() -> int:
        return int((weight(model, "conv0.weight").flatten(1).abs().sum(1) == 0).sum())

    channels = []
    for step in range(1, 21):
        sparsifier.on_step(model, step)
        channels.append(dead_channels())
        conv1 = weight(model, "conv1.weight").permute(0, 2, 3, 1).reshape(-1, 4)
        assert bool(((conv1 != 0).sum(1) <= 2).all())  # 2:4 at every step
    sparsifier.finalize(model)
    assert channels == sorted(channels) and channels[0] < channels[-1] == 4  # 4 of 8 channels, gradually
    assert get_mask(model.out, "weight") is None
    assert float((weight(model, "fc0.weight") == 0).float().mean()) == pytest.approx(0.75, abs=0.01)
    assert {name: sparsifier.pattern_of(name) for name in patterns} == patterns

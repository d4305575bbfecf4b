from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nas.sparse.masks import masks, prunable_weights
from nas.sparse.random_mask import RandomMask
from nas.sparse.rigl import erk_densities
from nas.sparse.stats import weight_densities, weight_sparsity

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(1, 8, 3, padding=1)),
                ("flatten", nn.Flatten()),
                ("fc0", nn.Linear(8 * 8 * 8, 100)),
                ("act0", nn.ReLU()),
                ("out", nn.Linear(100, 10)),
            ]
        )
    )


def attach(model: nn.Module, layer_sparsity: dict[str, float] | None = None, seed: int = 0, **params) -> RandomMask:
    sparsifier = RandomMask(RandomMask.Params(**params))
    torch.manual_seed(seed)  # as the trainer seeds each trial
    sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), 100, layer_sparsity)
    return sparsifier


def test_uniform_masks_every_weight_at_the_same_density_with_exact_counts() -> None:
    model = net()
    attach(model, distribution="uniform", sparsity=0.8)
    assert masks(model).keys() == {"conv.weight", "fc0.weight", "out.weight"}
    for name, density in weight_densities(model).items():
        numel = prunable_weights(model)[name][0].weight.numel()
        assert density * numel == round(0.2 * numel), name
    assert weight_sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_erk_densities_come_from_rigl_and_reach_the_target() -> None:
    model = net()
    attach(model, sparsity=0.9)  # "erk" is the default, as for RigL
    shapes = {name: tuple(m.weight.shape) for name, (m, _) in prunable_weights(model).items()}
    expected = erk_densities(shapes, 0.1)
    assert weight_densities(model) == pytest.approx(expected, abs=1e-3)
    assert weight_sparsity(model) == pytest.approx(0.9, abs=1e-3)
    assert weight_densities(model)["out.weight"] > weight_densities(model)["fc0.weight"]  # small layers keep more


def test_masks_are_random_reproducible_and_not_by_magnitude() -> None:
    first, again, other = net(), net(), net()
    attach(first, distribution="uniform")
    attach(again, distribution="uniform")
    attach(other, distribution="uniform", seed=1)
    assert torch.equal(masks(first)["fc0.weight"], masks(again)["fc0.weight"])
    assert not torch.equal(masks(first)["fc0.weight"], masks(other)["fc0.weight"])
    dense = net().fc0.weight.detach().abs()
    kept = masks(first)["fc0.weight"].bool()
    assert dense[~kept].max() > dense[kept].min()  # magnitude pruning would separate them


def test_per_weight_targets_override_and_the_rest_share_the_default() -> None:
    model = net()
    attach(model, {"out.weight": 0.0, "conv.weight": 0.5}, distribution="uniform", sparsity=0.9)
    assert weight_densities(model) == pytest.approx({"conv.weight": 0.5, "fc0.weight": 0.1, "out.weight": 1.0})
    with pytest.raises(ValueError, match=r"\['fc9.weight'\]"):
        attach(net(), {"fc9.weight": 0.5})


def test_masks_hold_through_training() -> None:
    model = net()
    attach(model, sparsity=0.95)
    before = {name: mask.clone() for name, mask in masks(model).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert all(torch.equal(masks(model)[name], mask) for name, mask in before.items())
    assert weight_sparsity(model) == pytest.approx(0.95, abs=1e-3)


def test_params_are_validated() -> None:
    assert RandomMask.Params().model_dump() == {"sparsity": 0.9, "distribution": "erk"}
    for bad in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"distribution": "normal"}, {"seed": 1}):
        with pytest.raises(ValidationError):
            RandomMask.Params(**bad)

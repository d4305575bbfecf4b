"""The `channel` sparsifier: whole output units by L1 norm or BatchNorm scale, classifier kept, run by the trainer."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nas import registry
from nas.sparse.base import WeightSpec
from nas.sparse.channel import ChannelPruning
from nas.sparse.masks import get_mask, prunable_weights
from nas.specs import JobSpec
from nas.training import run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [("fc0", nn.Linear(16, 40)), ("act0", nn.ReLU()), ("fc1", nn.Linear(40, 20)), ("act1", nn.ReLU()),
             ("out", nn.Linear(20, 10))]
        )
    )  # fmt: skip


def bn_cnn(seed: int = 0) -> nn.Sequential:
    """A conv with a BatchNorm after it, a grouped conv without one, and a classifier."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [("conv0", nn.Conv2d(1, 8, 3, padding=1, bias=False)), ("bn0", nn.BatchNorm2d(8)), ("act0", nn.ReLU()),
             ("conv1", nn.Conv2d(8, 8, 3, padding=1, groups=2)), ("act1", nn.ReLU()), ("flatten", nn.Flatten()),
             ("out", nn.Linear(8 * 8 * 8, 10))]
        )
    )  # fmt: skip


def attach(model: nn.Module, layer_sparsity: dict[str, float] | None = None, **params: object) -> ChannelPruning:
    sparsifier = ChannelPruning(ChannelPruning.Params(**params))
    sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10, layer_sparsity=layer_sparsity)
    return sparsifier


def zero_units(weight: torch.Tensor) -> list[int]:
    """Indices of the output units whose weights are all zero."""
    return [i for i, row in enumerate(weight.detach().flatten(1)) if not row.any()]


def test_params_default_to_the_papers_and_are_validated() -> None:
    defaults = {"sparsity": 0.5, "criterion": "l1", "prune_at": 0.5, "slimming": 1e-4}
    assert ChannelPruning.Params().model_dump() == defaults
    for bad in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"criterion": "l2"}, {"prune_at": 2}, {"slimming": -1}):
        with pytest.raises(ValidationError):
            ChannelPruning.Params(**bad)
    with pytest.raises(ValidationError, match="extra"):
        ChannelPruning.Params(m=4)
    assert registry.sparsifiers.create("channel", {"sparsity": 0.25}).params.sparsity == 0.25


def test_l1_removes_exactly_the_weakest_units_of_each_layer_but_never_the_classifier() -> None:
    model = mlp()
    with torch.no_grad():
        model.fc0.weight.copy_(model.fc0.weight.sign() * torch.linspace(4.0, 0.1, 40)[:, None])  # row L1 falls with i
    before = {name: getattr(m, attr).detach().clone() for name, (m, attr) in prunable_weights(model).items()}
    sparsifier = attach(model, prune_at=0.0, sparsity=0.3)

    assert zero_units(model.fc0.weight) == list(range(28, 40))  # round(0.3 * 40) = 12 weakest rows
    l1 = before["fc1.weight"].abs().sum(dim=1)
    assert zero_units(model.fc1.weight) == sorted(torch.argsort(l1)[:6].tolist())
    assert get_mask(model.out, "weight") is None and torch.equal(model.out.weight, before["out.weight"])
    for name in ("fc0.weight", "fc1.weight"):  # surviving rows are untouched
        weight = getattr(model, name.split(".")[0]).weight.detach()
        kept = weight.flatten(1).any(dim=1)
        assert torch.equal(weight[kept], before[name][kept])
    assert sparsifier.pattern_of("fc0.weight") == "channel"


def test_layer_targets_override_the_default_and_one_unit_always_survives() -> None:
    model = mlp()
    attach(model, {"fc0.weight": 0.99, "out.weight": 0.5}, prune_at=0.0, sparsity=0.5)
    assert len(zero_units(model.fc0.weight)) == 39  # round(0.99 * 40) = 40, capped so the layer stays connected
    assert len(zero_units(model.fc1.weight)) == 10
    assert zero_units(model.out.weight) == []  # the classifier's outputs are the classes
    with pytest.raises(ValueError, match="fc9.weight"):
        attach(mlp(), {"fc9.weight": 0.5})


def test_bn_criterion_ranks_channels_by_gamma_and_falls_back_to_l1() -> None:
    model = bn_cnn()
    gamma = torch.tensor([0.9, -0.05, 0.5, 0.01, -0.7, 0.2, 0.03, 1.0])
    with torch.no_grad():
        model.bn0.weight.copy_(gamma)
    l1 = model.conv1.weight.detach().abs().flatten(1).sum(dim=1)
    attach(model, prune_at=0.0, sparsity=0.5, criterion="bn")

    assert zero_units(model.conv0.weight) == [1, 3, 5, 6]  # the four smallest |γ|
    assert zero_units(model.conv1.weight) == sorted(torch.argsort(l1)[:4].tolist())  # no BatchNorm after it
    assert zero_units(model.out.weight) == []


def test_slimming_penalty_pushes_gamma_towards_zero_until_pruning() -> None:
    model = bn_cnn()
    sparsifier = attach(model, prune_at=0.5, criterion="bn", slimming=0.01)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))

    def gamma_grad(step: int) -> torch.Tensor:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        plain = model.bn0.weight.grad.clone()
        sparsifier.on_after_backward(model, step)
        return model.bn0.weight.grad - plain

    assert torch.allclose(gamma_grad(1), 0.01 * torch.sign(model.bn0.weight.detach()))
    assert model.conv1.weight.grad is not None  # only BatchNorm scales get the penalty
    sparsifier.on_step(model, 5)  # prune_at 0.5 of 10 steps
    assert len(zero_units(model.conv0.weight)) == 4
    assert torch.count_nonzero(gamma_grad(6)) == 0  # fine-tuning runs without it


def test_pruning_waits_for_prune_at_and_finalize_catches_short_runs() -> None:
    model = mlp()
    sparsifier = attach(model, prune_at=0.6)
    sparsifier.on_step(model, 5)
    assert zero_units(model.fc0.weight) == []
    sparsifier.on_step(model, 6)
    assert len(zero_units(model.fc0.weight)) == 20

    short = mlp()
    sparsifier = attach(short, prune_at=1.0)
    sparsifier.finalize(short)
    assert len(zero_units(short.fc1.weight)) == 10


def test_recurrent_weights_are_refused_at_submission() -> None:
    weights = [
        WeightSpec("fc0.weight", "linear", frozenset({64})),
        WeightSpec("rnn.weight_hh_l0", "lstm", frozenset({8})),
    ]
    [(location, message)] = ChannelPruning(ChannelPruning.Params()).check(weights)
    assert location == ("name",)
    assert message.startswith("rnn.weight_hh_l0 is a lstm weight, which this sparsifier does not support")
    assert message.endswith("(supported: conv2d, linear)")


def test_a_channel_job_trains_on_digits_with_whole_neurons_removed(data_dir: Path) -> None:
    job = JobSpec(
        search_space={"name": "sparse_mlp"},
        dataset={"name": "digits"},
        sparsifier={"name": "channel", "params": {"sparsity": 0.5, "prune_at": 0.5}},
        training={"epochs": 4, "batch_size": 32, "lr": 3e-3},
    )
    reports: list[dict[str, float]] = []
    arch = {"depth": 2, "width_0": 128, "width_1": 64, "activation": "relu"}
    outcome = run_trial(job, arch, data_dir, lambda epoch, metrics: reports.append(metrics))

    assert reports[0]["density:fc0.weight"] == 1.0  # dense until half-way
    assert [reports[-1][f"density:{n}.weight"] for n in ("fc0", "fc1", "out")] == [0.5, 0.5, 1.0]
    assert outcome.metrics["accuracy"] > 0.85  # fine-tuning recovers from losing half of every hidden layer
    assert [(layer["name"], layer["pattern"]) for layer in outcome.layers] == [
        ("fc0.weight", "channel"), ("fc1.weight", "channel"), ("out.weight", "dense"),
    ]  # fmt: skip

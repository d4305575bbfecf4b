"""HYDRA (Sehwag et al., 2020) as DASS uses it: exact top-k counts, straight-through scores, scaled init, phases."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nas.sparse.hydra import Hydra
from nas.sparse.layers import ScoreMask, SparseConv2d, SparseLinear, get_score_mask, topk_mask
from nas.sparse.masks import WeightMask, get_mask, prunable_weights, raw_weight
from nas.specs import JobSpec
from nas.training import evaluate, load_dataset, load_trained_model, run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def kept(numel: int, k: float) -> int:
    """HYDRA's GetSubnet keeps all but the lowest ``int((1 - k) * numel)`` scores."""
    return numel - int((1 - k) * numel)


def mlp(in_features: int = 64) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [("flatten", nn.Flatten()), ("fc0", nn.Linear(in_features, 64)), ("act0", nn.ReLU())]
    return nn.Sequential(OrderedDict([*layers, ("out", nn.Linear(64, 10))]))


@pytest.mark.parametrize("k", [0.01, 0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize(
    "make",
    [
        lambda k: SparseLinear(784, 300, k=k),
        lambda k: SparseLinear(10, 1, k=k),  # 10 weights: int((1 - 0.9) * 10) == 0 keeps all 10, as HYDRA does
        lambda k: SparseConv2d(6, 9, 3, k=k),
        lambda k: SparseConv2d(8, 8, 3, groups=8, k=k),  # depthwise
    ],
    ids=["linear", "linear-10", "conv", "depthwise"],
)
def test_each_layer_keeps_exactly_numel_minus_int_of_1_minus_k_times_numel(make, k: float) -> None:
    torch.manual_seed(0)
    layer = make(k)
    numel = layer.weight.numel()
    mask = get_mask(layer, "weight")
    assert int(mask.sum()) == kept(numel, k)
    assert int(torch.count_nonzero(layer.weight)) == kept(numel, k)
    # The kept weights are those of the largest |scores|.
    scores = layer.scores.detach().abs()
    if 0 < kept(numel, k) < numel:
        assert scores[mask == 1].min() >= scores[mask == 0].max()


def test_topk_count_is_exact_with_tied_scores() -> None:
    assert int(topk_mask(torch.ones(7, 11), 0.5).sum()) == kept(77, 0.5)


def test_masked_layers_compute_with_the_masked_weight_and_exact_zeros() -> None:
    torch.manual_seed(0)
    conv = SparseConv2d(8, 8, 3, padding=1, groups=4, k=0.25)
    x = torch.randn(2, 8, 5, 5)
    weight = raw_weight(conv, "weight").detach() * conv.score_mask.mask
    assert torch.equal(conv(x), nn.functional.conv2d(x, weight, conv.bias, padding=1, groups=4))
    assert int((conv.weight == 0).sum()) == conv.weight.numel() - kept(conv.weight.numel(), 0.25)


def test_score_gradient_is_passed_straight_through_the_top_k() -> None:
    torch.manual_seed(0)
    layer = SparseLinear(16, 8, k=0.5)
    x = torch.randn(5, 16)
    layer(x).square().sum().backward()

    w = raw_weight(layer, "weight").detach()
    masked = layer.weight.detach().clone().requires_grad_(True)
    nn.functional.linear(x, masked, layer.bias.detach()).square().sum().backward()
    # dL/dM = dL/d(W*M) * W, passed straight to |S|, then through |.| to S.
    expected = masked.grad * w * layer.scores.detach().sign()
    assert torch.allclose(layer.scores.grad, expected, rtol=1e-6, atol=0)
    assert (layer.scores.grad[layer.score_mask.mask == 0] != 0).any()  # pruned weights' scores learn too


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, groups=2)
        self.rnn = nn.GRU(6, 5, batch_first=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.conv(x).flatten(2).transpose(1, 2))
        return self.fc(out[:, -1])


def test_pruning_starts_from_scaled_scores_of_every_weight_kind() -> None:
    torch.manual_seed(0)
    model = Mixed()
    weights = {name: raw_weight(m, a).detach().clone() for name, (m, a) in prunable_weights(model).items()}
    sparsifier = Hydra(Hydra.Params(sparsity=0.7, pretrain_fraction=0.0))
    sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10, layer_sparsity=None)

    fan_in = {"conv.weight": 2 * 3 * 3, "rnn.weight_ih_l0": 6, "rnn.weight_hh_l0": 5, "fc.weight": 5}
    assert weights.keys() == fan_in.keys()
    for name, (module, attr) in prunable_weights(model).items():
        w = weights[name]
        scores = get_score_mask(module, attr).scores.detach()
        assert torch.allclose(scores, math.sqrt(6 / fan_in[name]) * w / w.abs().max(), rtol=1e-6, atol=0), name
        assert int(torch.count_nonzero(getattr(module, attr))) == kept(w.numel(), 0.3), name
    x = torch.randn(2, 4, 6, 6)
    model(x).sum().backward()  # the GRU reads its score-masked weights
    assert all(raw_weight(m, a).grad is None for m, a in prunable_weights(model).values())  # frozen


@pytest.mark.parametrize("train_weights", [False, True])
def test_prune_phase_learns_scores_then_finetuning_trains_weights_under_the_fixed_mask(
    data_dir: Path, train_weights: bool
) -> None:
    data = load_dataset("digits", {}, data_dir)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparsifier = Hydra(Hydra.Params(sparsity=0.8, pretrain_fraction=0.25, finetune_fraction=0.25, train_weights=train_weights))
    sparsifier.attach(model, optimizer, total_steps=40, layer_sparsity=None)
    fc0 = model.fc0

    def train(first: int, last: int) -> None:
        for step in range(first, last + 1):
            batch = slice(32 * step % 1300, 32 * step % 1300 + 32)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            sparsifier.on_step(model, step)

    train(1, 9)
    assert int(torch.count_nonzero(fc0.weight)) == fc0.weight.numel()  # dense pre-training
    train(10, 10)
    parametrization = get_score_mask(fc0, "weight")
    weight, bias = raw_weight(fc0, "weight").detach().clone(), fc0.bias.detach().clone()
    scores, mask = parametrization.scores.detach().clone(), parametrization.mask
    assert any(parametrization.scores is p for g in optimizer.param_groups for p in g["params"])

    train(11, 29)
    assert not torch.equal(parametrization.scores, scores)
    assert not torch.equal(parametrization.mask, mask)  # the scores re-ranked the weights
    assert int(parametrization.mask.sum()) == kept(fc0.weight.numel(), 0.2)
    assert torch.equal(raw_weight(fc0, "weight"), weight) != train_weights
    assert torch.equal(fc0.bias, bias) != train_weights

    train(30, 30)  # fine-tuning: hard masks, no scores anywhere, the weights train again
    [hard] = list(fc0.parametrizations.weight)
    assert isinstance(hard, WeightMask)
    assert not any(isinstance(m, ScoreMask) for m in model.modules())
    fixed, frozen_weight = hard.mask.clone(), fc0.weight.detach().clone()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    train(31, 40)
    sparsifier.finalize(model)
    assert torch.equal(hard.mask, fixed)
    assert not torch.equal(fc0.weight, frozen_weight)
    assert torch.equal(fc0.weight == 0, fixed == 0)


def test_layer_sparsity_of_the_space_overrides_the_sparsity_param() -> None:
    model = mlp()
    sparsifier = Hydra(Hydra.Params(sparsity=0.9, pretrain_fraction=0.0))
    sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), 10, {"fc0.weight": 0.75})
    assert int(torch.count_nonzero(model.fc0.weight)) == kept(64 * 64, 0.25)
    assert int(torch.count_nonzero(model.out.weight)) == kept(64 * 10, 0.1)


def test_k_is_an_alias_giving_the_same_sparsifier() -> None:
    """HYDRA's k (fraction kept) converts to sparsity = 1 - k: same params, same masks; both at once are refused."""
    assert Hydra.Params(k=0.3, pretrain_fraction=0.0) == Hydra.Params(sparsity=0.7, pretrain_fraction=0.0)
    assert Hydra.Params(k=1.0).sparsity == 0.0 and "k" not in Hydra.Params(k=0.3).model_dump()
    masks = []
    for params in ({"k": 0.3}, {"sparsity": 0.7}):
        model = mlp()
        sparsifier = Hydra(Hydra.Params(pretrain_fraction=0.0, **params))
        sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), 10, None)
        masks.append([get_score_mask(m, a).mask for m, a in prunable_weights(model).values()])
    assert all(torch.equal(a, b) for a, b in zip(*masks, strict=True))
    assert int(masks[0][0].sum()) == kept(64 * 64, 0.3)
    with pytest.raises(ValidationError, match="give sparsity or its alias k, not both"):
        Hydra.Params(k=0.3, sparsity=0.7)
    for bad in (0.0, 1.5, "0.3", True):
        with pytest.raises(ValidationError, match="must be a number in"):
            Hydra.Params(k=bad)


def test_sparse_layers_keep_their_scores_under_the_sparsifier() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(SparseLinear(64, 32), nn.ReLU(), SparseLinear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # already holds the layers' scores
    scores = model[0].scores
    sparsifier = Hydra(Hydra.Params(sparsity=0.5, pretrain_fraction=0.0, finetune_fraction=0.5))
    sparsifier.attach(model, optimizer, total_steps=4, layer_sparsity=None)
    assert model[0].scores is scores and len(model[0].parametrizations.weight) == 1
    assert model[0].k == 0.5 and len(optimizer.param_groups) == 1
    sparsifier.on_step(model, 2)
    assert [type(p) for p in model[0].parametrizations.weight] == [WeightMask]
    assert not any(p is scores for p in optimizer.param_groups[0]["params"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters())) == 4


def test_a_trial_prunes_each_layer_to_k_and_saves_the_final_sparse_net(data_dir: Path) -> None:
    job = JobSpec.model_validate(
        {
            "search_space": {"name": "sparse_mlp"},
            "dataset": {"name": "digits"},
            "sparsifier": {"name": "hydra", "params": {"sparsity": 0.8}},
            "training": {"epochs": 5, "batch_size": 16, "lr": 3e-3},
        }
    )
    arch = {"depth": 2, "width_0": 128, "width_1": 64, "activation": "relu"}
    reports: list[dict[str, float]] = []
    outcome = run_trial(job, arch, data_dir, lambda epoch, metrics: reports.append(metrics))

    # Dense pre-training for 40% of the steps, to the end of epoch 2, where the score masks start.
    assert [r["sparsity"] == 0.0 for r in reports] == [True, False, False, False, False]
    shapes = {"fc0.weight": (128, 64), "fc1.weight": (64, 128), "out.weight": (10, 64)}
    assert {layer["name"]: layer["density"] for layer in outcome.layers} == {
        name: kept(math.prod(shape), 0.2) / math.prod(shape) for name, shape in shapes.items()
    }
    assert all(layer["pattern"] == "unstructured" for layer in outcome.layers)
    assert outcome.metrics["accuracy"] > 0.85

    model = load_trained_model(outcome.model_bytes)
    assert all(isinstance(m.parametrizations[a][0], WeightMask) for m, a in prunable_weights(model).values())
    data = load_dataset("digits", {}, data_dir)
    _, accuracy = evaluate(model, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    assert accuracy == outcome.metrics["accuracy"]

"""RigL and SET (nas.sparse.rigl): ERK densities, the drop-fraction schedule and the drop-and-grow rules."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nas import registry
from nas.sparse.masks import get_mask, masks, prunable_weights, raw_weight
from nas.sparse.rigl import (
    SET, DynamicSparseTraining, RigL, drop_fraction, erk_densities, keep_count, target_densities, uniform_densities,
)
from nas.specs import JobSpec
from nas.training import run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LENET_SHAPES = {"fc0.weight": (300, 784), "fc1.weight": (100, 300), "out.weight": (10, 100)}
CNN_SHAPES = {
    "conv0.weight": (32, 3, 3, 3),
    "conv1.weight": (64, 32, 3, 3),
    "dw.weight": (64, 1, 3, 3),  # depthwise: in_channels // groups == 1
    "pw.weight": (128, 64, 1, 1),
    "fc.weight": (10, 128),
}


class Net(nn.Module):
    """Every supported weight kind: conv (plain and depthwise), LSTM, GRU and Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.dw(torch.relu(self.conv(x))))  # (B, 8, 8, 8)
        seq = h.mean(dim=3).transpose(1, 2)  # (B, 8 steps, 8 features)
        seq, _ = self.lstm(seq)
        seq, _ = self.gru(seq)
        return self.out(seq[:, -1])


def lenet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [("flatten", nn.Flatten()), ("fc0", nn.Linear(64, 300)), ("act0", nn.ReLU()),
             ("fc1", nn.Linear(300, 100)), ("act1", nn.ReLU()), ("out", nn.Linear(100, 10))]
        )
    )  # fmt: skip


def train(model: nn.Module, sparsifier: DynamicSparseTraining, optimizer: torch.optim.Optimizer,
          steps: range, on_step=None) -> None:  # fmt: skip
    """The trainer's hook order on random 8x8 inputs: zero_grad, forward, backward, on_after_backward, step, on_step."""
    gen = torch.Generator().manual_seed(steps.start)
    for step in steps:
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        sparsifier.on_after_backward(model, step)
        optimizer.step()
        sparsifier.on_step(model, step)
        if on_step is not None:
            on_step(step)


def make(cls: type[DynamicSparseTraining], **params: object) -> DynamicSparseTraining:
    return cls(cls.Params(**params))


def counts(model: nn.Module) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks(model).items()}


# --- densities and schedule -----------------------------------------------------------------------


@pytest.mark.parametrize("shapes", [LENET_SHAPES, CNN_SHAPES], ids=["lenet", "cnn"])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.2, 0.5, 0.9])
def test_erk_reaches_the_target_density_with_no_layer_above_one(shapes, density) -> None:
    densities = erk_densities(shapes, density)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(densities[name] * sizes[name] for name in shapes) / sum(sizes.values())
    assert total == pytest.approx(density, rel=1e-12)
    assert all(0.0 < d <= 1.0 for d in densities.values())
    # Layers below 1 follow ε·sum(shape)/prod(shape) with one shared ε.
    eps = {densities[n] * sizes[n] / sum(shapes[n]) for n in shapes if densities[n] < 1.0}
    assert max(eps) == pytest.approx(min(eps), rel=1e-12)
    # Exact per-layer counts keep the total within one entry per layer of the target.
    kept = sum(keep_count(sizes[n], densities[n]) for n in shapes)
    assert abs(kept - density * sum(sizes.values())) <= len(shapes)


def test_erk_makes_the_small_layers_dense_first() -> None:
    densities = erk_densities(LENET_SHAPES, 0.1)
    # ε = 26620 / 1594 would give out.weight 1.84: it goes dense and ε is re-solved over fc0 and fc1.
    assert densities["out.weight"] == 1.0
    assert densities["fc0.weight"] == pytest.approx(25620 / 1484 * 1084 / 235200)
    assert densities["fc1.weight"] == pytest.approx(25620 / 1484 * 400 / 30000)
    assert erk_densities(CNN_SHAPES, 1.0) == dict.fromkeys(CNN_SHAPES, 1.0)
    assert uniform_densities(LENET_SHAPES, 0.05) == dict.fromkeys(LENET_SHAPES, 0.05)
    with pytest.raises(ValueError, match="not in"):
        erk_densities(LENET_SHAPES, 0.0)


def test_drop_fraction_follows_the_cosine_schedule() -> None:
    assert drop_fraction(0, 0.3, 1000) == pytest.approx(0.3)
    assert drop_fraction(250, 0.3, 1000) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))
    assert drop_fraction(500, 0.3, 1000) == pytest.approx(0.15)
    assert drop_fraction(750, 0.3, 1000) == pytest.approx(0.15 * (1 - math.sqrt(0.5)))
    assert drop_fraction(1000, 0.3, 1000) == 0.0 and drop_fraction(1400, 0.3, 1000) == 0.0


def test_params_are_validated_and_registered() -> None:
    assert isinstance(registry.sparsifiers.create("rigl", {}), RigL)
    assert isinstance(registry.sparsifiers.create("set", {"sparsity": 0.95}), SET)
    defaults = RigL.Params()
    assert (defaults.sparsity, defaults.distribution, defaults.update_interval) == (0.9, "erk", 100)
    assert (defaults.end_fraction, defaults.drop_fraction) == (0.75, 0.3)
    for bad in ({"sparsity": 1.0}, {"distribution": "er"}, {"update_interval": 0}, {"drop_fraction": 0}, {"x": 1}):
        with pytest.raises(ValidationError):
            RigL.Params(**bad)


def test_the_plugin_module_imports_no_torch() -> None:
    code = "import sys, nas.sparse.rigl; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- drop and grow ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RigL, SET])
def test_every_kind_keeps_exact_counts_and_zeros_through_training(cls) -> None:
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    sparsifier = make(cls, sparsity=0.8, update_interval=2, drop_fraction=0.5)
    sparsifier.attach(model, optimizer, total_steps=40, layer_sparsity=None)
    assert set(prunable_weights(model)) == {
        "conv.weight", "dw.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0",
        "gru.weight_ih_l0", "gru.weight_hh_l0", "out.weight",
    }  # fmt: skip
    shapes = {name: tuple(getattr(m, a).shape) for name, (m, a) in prunable_weights(model).items()}
    densities = erk_densities(shapes, 0.2)
    expected = {n: keep_count(math.prod(shapes[n]), d) for n, d in densities.items() if d < 1.0}
    assert counts(model) == expected
    first = {name: mask.clone() for name, mask in masks(model).items()}

    train(model, sparsifier, optimizer, range(1, 41))
    sparsifier.finalize(model)

    assert counts(model) == expected  # the density never moved
    for name, (module, attr) in prunable_weights(model).items():
        if name in expected:
            mask = get_mask(module, attr)
            assert not torch.equal(mask, first[name]), f"{name} never changed its mask"
            assert torch.all(getattr(module, attr)[mask == 0] == 0)  # momentum and weight decay included


def test_rigl_drops_the_smallest_and_grows_the_largest_dense_gradient() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(12, 6, bias=False)
    model = nn.Sequential(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: the drop scores are known
    sparsifier = make(RigL, sparsity=0.5, distribution="uniform", update_interval=1, end_fraction=1.0)
    sparsifier.attach(model, optimizer, total_steps=10, layer_sparsity=None)
    before = get_mask(layer, "weight").bool()
    weight = layer.weight.detach().clone()
    # loss = sum_i c_i (W x)_i, so dL/dW = c xᵀ exactly, inactive entries included, all distinct.
    x, c = torch.arange(1.0, 13.0)[None, :], torch.arange(1.0, 7.0)
    optimizer.zero_grad()
    (model(x) @ c).sum().backward()
    sparsifier.on_after_backward(model, 1)
    optimizer.step()
    sparsifier.on_step(model, 1)

    n = math.floor(drop_fraction(1, 0.3, 10) * 36)
    assert n == 10
    drop_score = weight.abs().masked_fill(~before, math.inf).flatten()
    kept = before.flatten().clone()
    kept[drop_score.argsort()[:n]] = False
    grow_score = torch.outer(c, x[0]).flatten().masked_fill(kept, -math.inf)
    expected = kept.clone()
    expected[grow_score.argsort(descending=True)[:n]] = True
    after = get_mask(layer, "weight").bool()
    assert torch.equal(after.flatten(), expected)
    # Newly grown entries start at zero; surviving ones keep their value.
    fresh = after & ~before
    assert fresh.sum() > 0 and torch.all(layer.weight[fresh] == 0)
    assert torch.equal(layer.weight[after & before], weight[after & before])


def test_set_grows_only_among_inactive_weights_at_random() -> None:
    grown_fc0 = []
    for seed in (0, 1):
        model = lenet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        sparsifier = make(SET, sparsity=0.9, update_interval=1, end_fraction=1.0)
        torch.manual_seed(seed)  # the masks' generator is drawn from torch's global one
        sparsifier.attach(model, optimizer, total_steps=10, layer_sparsity=None)
        before = {name: mask.bool().clone() for name, mask in masks(model).items()}
        weights = {name: getattr(m, a).detach().clone() for name, (m, a) in prunable_weights(model).items()}
        torch.manual_seed(0)
        train(model, sparsifier, optimizer, range(1, 2))
        for name, mask in masks(model).items():
            old, new = before[name], mask.bool()
            n = math.floor(drop_fraction(1, 0.3, 10) * int(old.sum()))
            dropped, grown = old & ~new, new & ~old
            assert int(dropped.sum()) == int(grown.sum()) <= n  # dropped-and-regrown entries count in neither
            smallest = torch.zeros_like(old).flatten()
            smallest[weights[name].abs().masked_fill(~old, math.inf).flatten().argsort()[:n]] = True
            smallest = smallest.view_as(old)
            assert torch.all(smallest[dropped]) and torch.all(new[old & ~smallest])  # only the n smallest may go
            # Candidates are every entry not kept, the n just dropped included: uniformly, n·(1 - n/candidates) are new.
            candidates = old.numel() - int(old.sum()) + n
            assert abs(int(grown.sum()) - n * (1 - n / candidates)) < 4 * math.sqrt(n)
            assert torch.all(getattr(*prunable_weights(model)[name])[grown] == 0)
            if name == "fc0.weight":
                grown_fc0.append(grown)
    assert not torch.equal(grown_fc0[0], grown_fc0[1])  # where SET grows depends on the seed


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=1e-3),
], ids=["sgd-momentum", "adam"])  # fmt: skip
@pytest.mark.parametrize("cls", [RigL, SET])
def test_grown_weights_have_their_optimizer_moments_reset(cls, make_optimizer) -> None:
    model = lenet()
    optimizer = make_optimizer(model.parameters())
    sparsifier = make(cls, sparsity=0.9, update_interval=5, end_fraction=1.0)
    sparsifier.attach(model, optimizer, total_steps=20, layer_sparsity=None)
    train(model, sparsifier, optimizer, range(1, 5))
    before = {name: mask.bool().clone() for name, mask in masks(model).items()}
    raws = {name: raw_weight(*prunable_weights(model)[name]) for name in before}

    # Step 5 is an update: fill every moment with ones right after the optimizer step, before on_step.
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    sparsifier.on_after_backward(model, 5)
    optimizer.step()
    moments = [(name, v) for name in raws for v in optimizer.state[raws[name]].values() if v.shape == raws[name].shape]
    assert moments
    for _, value in moments:
        value.fill_(1.0)
    sparsifier.on_step(model, 5)

    for name, value in moments:
        fresh = masks(model)[name].bool() & ~before[name]
        assert fresh.sum() > 0
        assert torch.all(value[fresh] == 0) and torch.all(value[~fresh] == 1)
        assert torch.all(raws[name][fresh] == 0)


def test_masks_freeze_after_t_end() -> None:
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = make(RigL, update_interval=3, end_fraction=0.5)
    sparsifier.attach(model, optimizer, total_steps=40, layer_sparsity=None)
    history: dict[int, dict[str, torch.Tensor]] = {}
    train(model, sparsifier, optimizer, range(1, 41),
          on_step=lambda step: history.__setitem__(step, {n: m.clone() for n, m in masks(model).items()}))  # fmt: skip
    sparsifier.finalize(model)

    changed = [
        step for step in range(2, 41) if any(not torch.equal(m, history[step - 1][n]) for n, m in history[step].items())
    ]
    assert changed == [3, 6, 9, 12, 15, 18]  # every ΔT=3 steps, until T_end = 20
    assert all(torch.equal(m, history[40][n]) for n, m in masks(model).items())


def test_layer_sparsity_overrides_the_distribution() -> None:
    densities = target_densities(LENET_SHAPES, 0.9, "erk", {"fc0.weight": 0.5})
    rest = erk_densities({name: LENET_SHAPES[name] for name in ("fc1.weight", "out.weight")}, 0.1)
    assert densities == pytest.approx({"fc0.weight": 0.5, **rest})
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = make(SET, sparsity=0.9, distribution="uniform")
    sparsifier.attach(model, optimizer, total_steps=10, layer_sparsity={"fc0.weight": 0.5})
    assert counts(model) == {"fc0.weight": 9600, "fc1.weight": 3000, "out.weight": 100}
    with pytest.raises(ValueError, match="does not have"):
        make(SET).attach(lenet(), optimizer, total_steps=10, layer_sparsity={"fc9.weight": 0.5})


# --- through the trainer ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_a_trial_trains_at_the_spec_sparsity(name: str, data_dir: Path) -> None:
    job = JobSpec(
        search_space={"name": "sparse_mlp"},
        dataset={"name": "digits"},
        sparsifier={"name": name, "params": {"sparsity": 0.9, "update_interval": 10}},
        training={"epochs": 3, "batch_size": 16, "lr": 3e-3},
    )
    arch = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}
    outcome = run_trial(job, arch, data_dir, lambda epoch, metrics: None)
    assert outcome.metrics["accuracy"] > 0.85
    # Grown weights start at zero, and some meet inputs that are always 0 on digits: at most 0.1% more zeros.
    assert 0.9 <= outcome.metrics["sparsity"] < 0.901
    densities = erk_densities({"fc0.weight": (300, 64), "fc1.weight": (100, 300), "out.weight": (10, 100)}, 0.1)
    for layer in outcome.layers:
        numel = math.prod(layer["shape"])
        assert layer["density"] <= keep_count(numel, densities[layer["name"]]) / numel

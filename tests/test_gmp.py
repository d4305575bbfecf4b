from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nas.data.digits import Digits
from nas.sparse.gmp import GradualMagnitudePruning
from nas.sparse.masks import masks
from nas.sparse.stats import weight_densities, weight_sparsity

pytestmark = pytest.mark.usefixtures("torch_single_thread")

Params = GradualMagnitudePruning.Params


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            [("flatten", nn.Flatten()), ("fc0", nn.Linear(64, 100)), ("act0", nn.ReLU()), ("out", nn.Linear(100, 10))]
        )
    )


def attached(total_steps: int, layer_sparsity: dict[str, float] | None = None, **params: object):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sparsifier = GradualMagnitudePruning(Params(**params))
    sparsifier.attach(model, optimizer, total_steps, layer_sparsity)
    return model, optimizer, sparsifier


def train(model: nn.Module, optimizer: torch.optim.Optimizer, sparsifier, steps: range, after_step=None) -> None:
    """Steps of SGD on the digits, calling the hooks in the trainer's order."""
    data = Digits(Digits.Params()).load(Path("unused"))
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(0)
    for step in steps:
        batch = torch.randint(len(x), (32,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        sparsifier.on_after_backward(model, step)
        optimizer.step()
        sparsifier.on_step(model, step)
        if after_step is not None:
            after_step(step)


def test_cubic_schedule_values_are_exact() -> None:
    _, _, gmp = attached(1000, frequency=50)  # t0 = 100, n·Δt = 600: Δt = 50, n = 12
    assert (gmp.t0, gmp.dt, gmp.n) == (100, 50, 12)
    assert gmp.sparsity_at(100) == 0.0
    assert gmp.sparsity_at(400) == pytest.approx(0.9 - 0.9 * 0.5**3)  # halfway: s_f + (s_i - s_f)(1/2)³
    assert gmp.sparsity_at(150) == pytest.approx(0.9 - 0.9 * (11 / 12) ** 3)
    assert gmp.sparsity_at(700) == pytest.approx(0.9)
    assert [gmp.sparsity_at(t) for t in (0, 99, 125, 750, 1000)] == [None] * 5  # not update steps

    _, _, gmp = attached(1000, frequency=100, initial_sparsity=0.2, sparsity=0.8, start=0.0, end=1.0)
    assert (gmp.t0, gmp.dt, gmp.n) == (0, 100, 10)
    assert [gmp.sparsity_at(t) for t in (0, 500, 1000)] == pytest.approx([0.2, 0.8 - 0.6 * 0.125, 0.8])
    assert gmp.sparsity_at(500, final=0.4) == pytest.approx(0.4 - 0.2 * 0.125)  # a weight with its own s_f


def test_short_runs_lower_the_frequency_to_keep_ten_updates() -> None:
    _, _, gmp = attached(100)  # t0 = 10, n·Δt ≤ 60: Δt = 6 instead of 100
    assert (gmp.t0, gmp.dt, gmp.n) == (10, 6, 10)
    _, _, gmp = attached(10, start=0.5, end=0.5)  # no room for a schedule: s_f at once, at t0
    assert gmp.n == 0 and gmp.sparsity_at(5) == pytest.approx(0.9) and gmp.sparsity_at(6) is None


def test_sparsity_follows_the_schedule_and_pruned_weights_stay_pruned() -> None:
    total = 200
    model, optimizer, gmp = attached(total, {"out.weight": 0.5}, frequency=10)  # t0 = 20, Δt = 10, n = 12
    seen: list[int] = []
    previous: dict[str, torch.Tensor] = {}

    def check(step: int) -> None:
        target = gmp.sparsity_at(step)
        if target is None:
            return
        seen.append(step)
        densities = weight_densities(model)
        assert densities["fc0.weight"] == pytest.approx(1 - target, abs=1 / 6400)
        assert densities["out.weight"] == pytest.approx(1 - gmp.sparsity_at(step, final=0.5), abs=1 / 1000)
        for name, mask in masks(model).items():
            if name in previous:
                assert torch.all(mask[previous[name] == 0] == 0), f"{name}: a pruned weight came back at {step}"
            previous[name] = mask.clone()

    train(model, optimizer, gmp, range(1, total + 1), check)
    assert seen == list(range(20, 141, 10))
    gmp.finalize(model)
    assert weight_densities(model) == pytest.approx({"fc0.weight": 0.1, "out.weight": 0.5}, abs=1e-3)
    assert torch.all(model.fc0.weight[masks(model)["fc0.weight"] == 0] == 0)


def test_global_scope_reaches_the_target_over_all_weights_together() -> None:
    model, optimizer, gmp = attached(100, scope="global", start=0.0, end=0.5)
    train(model, optimizer, gmp, range(1, 26))
    assert weight_sparsity(model) == pytest.approx(gmp.sparsity_at(25), abs=1e-3)


def test_finalize_completes_a_schedule_cut_short() -> None:
    model, optimizer, gmp = attached(1000)
    train(model, optimizer, gmp, range(1, 201))  # stopped at step 200 of 1000
    assert weight_sparsity(model) < 0.9
    gmp.finalize(model)
    assert weight_sparsity(model) == pytest.approx(0.9, abs=1e-3)


def test_params_are_validated() -> None:
    assert Params().model_dump() == {
        "sparsity": 0.9, "initial_sparsity": 0.0, "start": 0.1, "end": 0.7, "frequency": 100, "scope": "layer",
    }  # fmt: skip
    with pytest.raises(ValidationError, match="initial_sparsity 0.5 exceeds sparsity 0.3"):
        Params(initial_sparsity=0.5, sparsity=0.3)
    with pytest.raises(ValidationError, match="start 0.8 is after end 0.7"):
        Params(start=0.8)
    for bad in ({"sparsity": 1.0}, {"final_sparsity": 1.0}, {"frequency": 0}, {"scope": "channel"}, {"target": 0.5}):
        with pytest.raises(ValidationError):
            Params(**bad)


def test_final_sparsity_is_an_alias_of_sparsity() -> None:
    """The schedule's paper name gives the same params, and so the same sparsifier; both at once are refused."""
    assert Params(final_sparsity=0.8, initial_sparsity=0.1) == Params(sparsity=0.8, initial_sparsity=0.1)
    assert "final_sparsity" not in Params(final_sparsity=0.8).model_dump()  # stored specs carry the canonical name
    with pytest.raises(ValidationError, match="give sparsity or its alias final_sparsity, not both"):
        Params(sparsity=0.8, final_sparsity=0.8)
    with pytest.raises(ValidationError, match="initial_sparsity 0.5 exceeds sparsity 0.3"):
        Params(final_sparsity=0.3, initial_sparsity=0.5)

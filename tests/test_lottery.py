"""Lottery tickets (Frankle & Carbin 2019): exact prune counts, exact rewinding, masks that hold, every weight kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from nas.sparse.lottery import LotteryTicket, survivors_by_rate, survivors_to_target
from nas.sparse.masks import get_mask, masks, prunable_weights, raw_weight
from nas.specs import JobSpec
from nas.training import load_dataset, run_trial
from tests.models import lenet

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LENET_SIZES = {"fc0.weight": 784 * 300, "fc1.weight": 300 * 100, "out.weight": 100 * 10}


class ConvRecurrent(nn.Module):
    """A depthwise-separable conv front end read row by row by a GRU then an LSTM: every prunable kind."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.gru = nn.GRU(32, 24, batch_first=True)
        self.lstm = nn.LSTM(24, 16, batch_first=True)
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.depthwise(torch.relu(self.conv(x))))  # (batch, 4, 8, 8)
        rows = h.permute(0, 2, 1, 3).flatten(2)  # 8 time steps of 4 * 8 features
        seq, _ = self.lstm(self.gru(rows)[0])
        return self.out(seq[:, -1])


@pytest.fixture(scope="module")
def digits(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", {}, data_dir)
    return torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sparsifier: LotteryTicket,
    data: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    after_step: Callable[[int], None] = lambda step: None,
) -> None:
    """The trainer's step order on batches of 32 digits; ``after_step(step)`` runs after the sparsifier's hook."""
    x, y = data
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(x), (32,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        sparsifier.on_after_backward(model, step)
        optimizer.step()
        sparsifier.on_step(model, step)
        after_step(step)


def params_by_name(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the weights as the forward pass sees them, by plain state_dict name."""
    names = [name for name, _ in model.named_parameters() if "parametrizations" not in name]
    return {name: model.get_parameter(name).detach().clone() for name in names} | {
        name: getattr(module, attr).detach().clone() for name, (module, attr) in prunable_weights(model).items()
    }


def attach(model: nn.Module, total_steps: int, **params: object) -> tuple[LotteryTicket, torch.optim.Optimizer]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sparsifier = LotteryTicket(LotteryTicket.Params(**params))
    sparsifier.attach(model, optimizer, total_steps, None)
    return sparsifier, optimizer


def test_lenet_remaining_fractions_follow_from_the_rates() -> None:
    """Frankle & Carbin's P_m for LeNet-300-100 (20% hidden, 10% output per round), on the model itself."""
    published = {3: 51.3, 7: 21.1, 9: 13.5, 12: 7.0, 15: 3.6, 18: 1.9}
    total = sum(LENET_SIZES.values())
    for rounds, percent in published.items():
        rates = {name: 0.1 if name == "out.weight" else 0.2 for name in LENET_SIZES}
        left = sum(survivors_by_rate(n, rates[name], rounds)[-1] for name, n in LENET_SIZES.items())
        assert round(100 * left / total, 1) == percent

    # The sparsifier reaches the same counts, round after round, without any training in between.
    model = lenet(784)
    sparsifier, _ = attach(model, total_steps=19, rounds=18)
    for step in range(1, 19):
        sparsifier.on_step(model, step)
        if step in published:
            kept = sum(int(mask.sum()) for mask in masks(model).values())
            assert round(100 * kept / total, 1) == published[step]
    assert sparsifier.round == 18


def test_survivor_schedules_are_exact() -> None:
    assert survivors_by_rate(1000, 0.1, 3) == [1000, 900, 810, 729]
    assert survivors_by_rate(3, 0.5, 4) == [3, 1, 1, 1, 1]  # round(1.5) = 2 pruned; the last weight stays
    assert survivors_to_target(1000, 0.9, 2) == [1000, 316, 100]
    assert survivors_to_target(64, 0.0, 3) == [64, 64, 64, 64]


def test_rewinding_restores_theta_k_exactly_and_resets_the_optimizer(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = lenet(64)
    sparsifier, optimizer = attach(model, total_steps=60, rounds=2, rewind_steps=5)
    theta_k: dict[str, torch.Tensor] = {}
    previous: dict[str, torch.Tensor] = {}
    checked: list[int] = []

    def check(step: int) -> None:
        if step == 5:
            theta_k.update(params_by_name(model))
        if step not in (20, 40):  # the ends of the first two of three training runs
            return
        assert optimizer.state == {}
        assert sparsifier.round == step // 20
        now = params_by_name(model)
        for name, (module, attr) in prunable_weights(model).items():
            keep = get_mask(module, attr).bool()
            raw = raw_weight(module, attr).detach()
            assert torch.equal(raw[keep], theta_k[name][keep])  # bit-equal survivors
            assert not raw[~keep].any() and not now[name][~keep].any()
            if name in previous:
                assert not (keep & ~previous[name]).any()  # pruned weights never come back
            previous[name] = keep
        for name in ("fc0.bias", "fc1.bias", "out.bias"):
            assert torch.equal(now[name], theta_k[name])
        checked.append(step)

    train(model, optimizer, sparsifier, digits, 60, check)
    assert checked == [20, 40]
    assert sparsifier.epoch_metrics(model) == {"round": 2.0}


def test_reset_to_theta_0_is_exact_and_masks_hold_through_training(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = lenet(64)
    theta_0 = params_by_name(model)
    sparsifier, optimizer = attach(model, total_steps=90, rounds=2)
    sizes = {name: getattr(module, attr).numel() for name, (module, attr) in prunable_weights(model).items()}
    final_masks: dict[str, torch.Tensor] = {}

    def check(step: int) -> None:
        if step in (30, 60):
            r = step // 30
            for name, (module, attr) in prunable_weights(model).items():
                keep = get_mask(module, attr).bool()
                rate = 0.1 if name == "out.weight" else 0.2
                assert int(keep.sum()) == survivors_by_rate(sizes[name], rate, r)[-1]  # exact count each round
                assert torch.equal(raw_weight(module, attr).detach(), theta_0[name] * keep)
            final_masks.update({name: mask.clone() for name, mask in masks(model).items()})

    train(model, optimizer, sparsifier, digits, 90, check)
    # 30 more Adam steps under the final masks: pruned weights are still exactly zero, survivors moved.
    for name, (module, attr) in prunable_weights(model).items():
        keep = final_masks[name].bool()
        weight, raw = getattr(module, attr).detach(), raw_weight(module, attr).detach()
        assert not weight[~keep].any() and not raw[~keep].any()
        assert not torch.equal(weight[keep], theta_0[name][keep])
    sparsifier.finalize(model)  # all rounds done: finalize changes nothing
    assert all(torch.equal(masks(model)[name], mask) for name, mask in final_masks.items())


def test_conv_depthwise_gru_and_lstm_weights_are_pruned_and_rewound(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    model = ConvRecurrent()
    theta_0 = params_by_name(model)
    assert list(prunable_weights(model)) == [
        "conv.weight", "depthwise.weight", "gru.weight_ih_l0", "gru.weight_hh_l0",
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "out.weight",
    ]  # fmt: skip
    sparsifier, optimizer = attach(model, total_steps=40, rounds=3)

    def check(step: int) -> None:
        if step % 10 == 0 and step < 40:
            for name, (module, attr) in prunable_weights(model).items():
                keep = get_mask(module, attr).bool()
                rate = 0.1 if name == "out.weight" else 0.2
                assert int(keep.sum()) == survivors_by_rate(theta_0[name].numel(), rate, step // 10)[-1]
                assert torch.equal(getattr(module, attr).detach(), theta_0[name] * keep)

    train(model, optimizer, sparsifier, digits, 40, check)
    assert sparsifier.round == 3
    x, _ = digits
    assert torch.isfinite(model(x[:8])).all()
    for name, (module, attr) in prunable_weights(model).items():
        assert not getattr(module, attr).detach()[~get_mask(module, attr).bool()].any(), name


def test_reinit_redraws_survivors_from_the_initialiser_reproducibly(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    def run(seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        model = lenet(64)
        theta_0 = params_by_name(model)
        sparsifier, optimizer = attach(model, total_steps=20, rounds=1, reinit=True, seed=seed)
        global_rng = torch.get_rng_state()
        train(model, optimizer, sparsifier, digits, 10)  # to the end of the dense run, where it prunes and re-draws
        assert optimizer.state == {}
        assert torch.equal(torch.get_rng_state(), global_rng)  # drawn from the sparsifier's own generator
        return model, theta_0

    model, theta_0 = run(seed=1)
    again, _ = run(seed=1)
    other, _ = run(seed=2)
    for name, (module, attr) in prunable_weights(model).items():
        keep = get_mask(module, attr).bool()
        weight = getattr(module, attr).detach()
        assert not weight[~keep].any()
        assert not torch.equal(weight[keep], theta_0[name][keep])  # not rewound
        assert weight.abs().max() <= 1 / module.in_features**0.5  # nn.Linear's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert torch.equal(weight, getattr(*prunable_weights(again)[name]).detach())
        assert not torch.equal(weight[keep], getattr(*prunable_weights(other)[name]).detach()[keep])


def test_layer_targets_and_a_named_output_layer() -> None:
    model = lenet(64)
    optimizer = torch.optim.Adam(model.parameters())
    sparsifier = LotteryTicket(LotteryTicket.Params(rounds=3, output_layer="fc1.weight"))
    sparsifier.attach(model, optimizer, 40, {"fc0.weight": 0.9})
    for step in range(1, 41):
        sparsifier.on_step(model, step)
    kept = {name: int(mask.sum()) for name, mask in masks(model).items()}
    assert kept == {
        "fc0.weight": round(0.1 * 64 * 300),  # its target, exactly
        "fc1.weight": survivors_by_rate(300 * 100, 0.1, 3)[-1],  # named as the output layer
        "out.weight": survivors_by_rate(100 * 10, 0.2, 3)[-1],
    }


def test_a_sparsity_sets_every_layers_final_sparsity_as_for_the_other_sparsifiers() -> None:
    """Given ``sparsity``, each round prunes the constant rate that ends every weight exactly there."""
    model = lenet(64)
    sparsifier, _ = attach(model, total_steps=40, rounds=2, sparsity=0.9)
    sparsifier.finalize(model)
    sizes = {"fc0.weight": 64 * 300, "fc1.weight": 300 * 100, "out.weight": 100 * 10}
    assert {name: int(mask.sum()) for name, mask in masks(model).items()} == {
        name: survivors_to_target(n, 0.9, 2)[-1] for name, n in sizes.items()
    }
    assert LotteryTicket.Params(sparsity=0.9).model_dump()["rate_hidden"] is None  # stored specs validate again


def test_training_cut_short_still_ends_with_the_final_masks() -> None:
    model = lenet(64)
    sparsifier, _ = attach(model, total_steps=40, rounds=3)
    for step in range(1, 15):
        sparsifier.on_step(model, step)
    assert sparsifier.round == 1
    sparsifier.finalize(model)
    assert sparsifier.round == 3
    assert int(masks(model)["fc0.weight"].sum()) == survivors_by_rate(64 * 300, 0.2, 3)[-1]


@pytest.mark.parametrize(
    "params",
    [{"rounds": 0}, {"rate_hidden": 1.0}, {"rate_hidden": 0.0}, {"rate_output": -0.1}, {"rewind_steps": -1},
     {"reinit": True, "rewind_steps": 10}, {"output_layer": ""}, {"rate": 0.2}, {"sparsity": 1.0},
     {"sparsity": 0.9, "rate_hidden": 0.2}, {"sparsity": 0.9, "rate_output": 0.0}],
)  # fmt: skip
def test_bad_params_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LotteryTicket.Params(**params)


@pytest.mark.parametrize(
    ("params", "total_steps", "layer_sparsity", "message"),
    [
        ({"rounds": 3, "rewind_steps": 10}, 40, None, "rewind_steps 10 must fall inside the first training run"),
        ({"rounds": 3}, 3, None, "3 training steps cannot make 4 training runs"),
        ({"output_layer": "head.weight"}, 40, None, "output_layer 'head.weight' is not a prunable weight"),
        ({}, 40, {"fc9.weight": 0.5}, "fc9.weight"),
    ],
)
def test_attach_refuses_plans_that_cannot_run(
    params: dict[str, object], total_steps: int, layer_sparsity: dict[str, float] | None, message: str
) -> None:
    model = lenet(64)
    with pytest.raises(ValueError, match=message):
        LotteryTicket(LotteryTicket.Params(**params)).attach(
            model, torch.optim.Adam(model.parameters()), total_steps, layer_sparsity
        )


def test_lottery_trial_on_digits_reports_rounds_and_reaches_the_planned_sparsity(data_dir: Path) -> None:
    job = JobSpec(
        search_space={"name": "sparse_mlp"},
        dataset={"name": "digits"},
        sparsifier={"name": "lottery", "params": {"rounds": 3}},
        training={"epochs": 4, "batch_size": 32, "lr": 3e-3},
    )
    arch = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}
    reports: list[dict[str, float]] = []
    outcome = run_trial(job, arch, data_dir, lambda epoch, metrics: reports.append(metrics))

    assert [metrics["round"] for metrics in reports] == [1.0, 2.0, 3.0, 3.0]  # one training run per epoch
    sizes = {"fc0": 64 * 300, "fc1": 300 * 100, "out": 100 * 10}
    kept = {name: survivors_by_rate(n, 0.1 if name == "out" else 0.2, 3)[-1] for name, n in sizes.items()}
    assert [layer["density"] for layer in outcome.layers] == [kept[name] / n for name, n in sizes.items()]
    assert outcome.metrics["sparsity"] == pytest.approx(1 - sum(kept.values()) / sum(sizes.values()))
    assert outcome.metrics["accuracy"] > 0.85  # as the other sparsifiers' digits trials: chance is 0.1

"""N:M sparsity with SR-STE (Zhou et al., ICLR 2021): the exact pattern, the gradient rule, SAD, validation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nas.sparse.base import WeightSpec
from nas.sparse.masks import WeightMask, prunable_weights, raw_weight
from nas.sparse.nm import NM
from nas.specs import JobSpec
from nas.training import evaluate, load_dataset, load_trained_model, run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Mixed(nn.Module):
    """One weight of every kind N:M must handle: Linear, Conv2d (plain and grouped) and LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)  # 8 input channels per group
        self.rnn = nn.LSTM(16, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.grouped(torch.relu(self.conv(x))))  # (B, 16, H, W)
        seq = x.flatten(2).transpose(1, 2)  # (B, H*W, 16): one time step per pixel
        out, _ = self.rnn(seq)
        return self.fc(out[:, -1])


def attached(model: nn.Module, **params: object) -> NM:
    sparsifier = NM(NM.Params(**params))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier.attach(model, optimizer, total_steps=10, layer_sparsity=None)
    return sparsifier


def groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """``weight`` as rows of ``m`` consecutive input-channel entries: one row per (out, kh, kw, group)."""
    return weight.movedim(1, -1).reshape(-1, m)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_every_group_of_m_input_channels_keeps_exactly_its_n_largest_weights(n: int, m: int) -> None:
    torch.manual_seed(0)
    model = Mixed()
    dense = {name: raw_weight(m, a).detach().clone() for name, (m, a) in prunable_weights(model).items()}
    sparsifier = attached(model, n=n, m=m)

    assert set(dense) == {"conv.weight", "grouped.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "fc.weight"}
    for name, (module, attr) in prunable_weights(model).items():
        effective = groups(getattr(module, attr).detach(), m)
        original = groups(dense[name], m)
        kept = effective != 0
        assert (kept.sum(dim=1) == n).all(), name
        assert torch.equal(effective[kept], original[kept]), name  # kept weights are untouched
        # Every kept |w| is at least every pruned |w| of its own group.
        smallest_kept = original.abs().masked_fill(~kept, float("inf")).amin(dim=1)
        largest_pruned = original.abs().masked_fill(kept, -1.0).amax(dim=1)
        assert (smallest_kept >= largest_pruned).all(), name
        assert sparsifier.pattern_of(name) == f"{n}:{m}"


def test_masked_forward_is_the_dense_computation_with_exact_zeros() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    attached(layer)
    weight, dense = layer.weight.detach(), raw_weight(layer, "weight").detach()
    mask = layer.parametrizations.weight[0].mask
    assert int((weight == 0).sum()) == 8 * 16 // 2  # exactly zero, not small
    assert torch.equal(weight, dense * mask)
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), nn.functional.linear(x, dense * mask, layer.bias))


def test_srste_gradient_is_the_ste_gradient_plus_lambda_times_the_pruned_weights() -> None:
    torch.manual_seed(0)
    base = Mixed()
    x, y = torch.randn(4, 8, 5, 5), torch.randint(0, 10, (4,))
    lam = 2e-4
    grads = {}
    for method in ("ste", "srste"):
        model = copy.deepcopy(base)
        attached(model, method=method, lambda_w=lam)
        nn.functional.cross_entropy(model(x), y).backward()
        grads[method] = {name: raw_weight(m, a).grad for name, (m, a) in prunable_weights(model).items()}
        weights = {name: raw_weight(m, a).detach() for name, (m, a) in prunable_weights(model).items()}
        masks = {name: m.parametrizations[a][0].mask for name, (m, a) in prunable_weights(model).items()}

    for name, weight in weights.items():
        mask = masks[name]
        assert 0 < int(mask.sum()) < mask.numel()
        assert torch.equal(grads["srste"][name], grads["ste"][name] + lam * (1 - mask) * weight), name
        # STE passes the gradient of the masked weight to pruned entries too: they still learn.
        assert grads["ste"][name][mask == 0].abs().sum() > 0, name


def test_ste_gradient_is_the_gradient_of_the_masked_weight() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    attached(layer, method="ste")
    x = torch.randn(5, 16)
    layer(x).square().sum().backward()
    masked = layer.weight.detach().clone().requires_grad_(True)
    nn.functional.linear(x, masked, layer.bias.detach()).square().sum().backward()
    assert torch.equal(raw_weight(layer, "weight").grad, masked.grad)


def test_sad_counts_mask_flips_between_epochs_over_all_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4))
    sparsifier = attached(model)
    sparsifier.on_epoch_end(model, 1)
    assert sparsifier.epoch_metrics(model) == {"sad": 0.0}  # nothing trained, nothing flipped

    with torch.no_grad():  # swap the kept and a pruned weight of one group: 2 of 48 mask entries flip
        w = raw_weight(model[0], "weight")
        group = w[0, :4]
        kept, pruned = int(group.abs().argmax()), int(group.abs().argmin())
        group[kept], group[pruned] = group[pruned].clone(), group[kept].clone() * 2
    sparsifier.on_epoch_end(model, 2)
    assert sparsifier.epoch_metrics(model) == {"sad": 2 / 48}


def test_n_above_m_is_refused_with_both_named() -> None:
    with pytest.raises(ValidationError) as refused:
        NM.Params(n=5, m=4)
    assert "n=5" in str(refused.value) and "m=4" in str(refused.value)

    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate(
            {
                "search_space": {"name": "sparse_mlp"},
                "dataset": {"name": "mnist"},
                "sparsifier": {"name": "nm", "params": {"n": 3, "m": 2}},
            }
        )
    [error] = refused.value.errors()
    assert error["loc"] == ("sparsifier", "params") and "n=3" in error["msg"] and "m=2" in error["msg"]


def test_widths_that_cannot_be_grouped_by_m_are_refused_at_submission() -> None:
    job = {
        "search_space": {"name": "sparse_mlp", "params": {"width_choices": [100], "max_depth": 2}},
        "dataset": {"name": "mnist"},
        "sparsifier": {"name": "nm", "params": {"n": 2, "m": 8}},
    }
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate(job)
    errors = refused.value.errors()
    assert {e["loc"] for e in errors} == {("sparsifier", "params", "m")}
    assert {e["msg"].split()[0] for e in errors} == {"fc1.weight", "out.weight"}  # fc0 has 784 = 98 * 8 inputs
    assert all("100" in e["msg"] and "M=8" in e["msg"] for e in errors)

    job["sparsifier"]["params"]["m"] = 4  # 100 = 25 * 4
    assert JobSpec.model_validate(job).sparsifier.params == {"n": 2, "m": 4, "lambda_w": 2e-4, "method": "srste"}


def test_check_refuses_depthwise_convolutions() -> None:
    sparsifier = NM(NM.Params())
    weights = [
        WeightSpec("stem.weight", "conv2d", frozenset({16}), kernel_size=9),
        WeightSpec("dw.weight", "conv2d", frozenset({1}), kernel_size=9),  # in_channels // groups = 1
        WeightSpec("rnn.weight_hh_l0", "lstm", frozenset({12, 30})),
    ]
    assert sparsifier.check(weights) == [
        (("params", "m"), "dw.weight can have 1 input features (per group), which is not a multiple of M=4; "
         "N:M groups run along the input channels"),
        (("params", "m"), "rnn.weight_hh_l0 can have 30 input features (per group), which is not a multiple of M=4; "
         "N:M groups run along the input channels"),
    ]  # fmt: skip
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match="0.weight has 1 input channels"):
        attached(model)


def test_a_trial_trains_2_to_4_sparse_reports_sad_and_saves_hard_masks(data_dir: Path) -> None:
    job = JobSpec.model_validate(
        {
            "search_space": {"name": "sparse_mlp"},
            "dataset": {"name": "digits"},
            "sparsifier": {"name": "nm", "params": {"n": 2, "m": 4}},
            "training": {"epochs": 3, "batch_size": 16, "optimizer": "sgd", "lr": 0.05},
        }
    )
    arch = {"depth": 2, "width_0": 128, "width_1": 64, "activation": "relu"}
    reports: list[dict[str, float]] = []
    outcome = run_trial(job, arch, data_dir, lambda epoch, metrics: reports.append(metrics))

    assert all(0.0 <= r["sad"] < 0.5 for r in reports)
    assert reports[0]["sad"] > 0  # the masks of a network trained from scratch move
    assert all(r["sparsity"] == 0.5 for r in reports)
    assert outcome.metrics["accuracy"] > 0.85
    assert [(layer["name"], layer["density"], layer["pattern"]) for layer in outcome.layers] == [
        ("fc0.weight", 0.5, "2:4"), ("fc1.weight", 0.5, "2:4"), ("out.weight", 0.5, "2:4"),
    ]  # fmt: skip

    model = load_trained_model(outcome.model_bytes)
    for module, attr in prunable_weights(model).values():
        assert isinstance(module.parametrizations[attr][0], WeightMask)
        assert ((groups(getattr(module, attr).detach(), 4) != 0).sum(dim=1) == 2).all()
    data = load_dataset("digits", {}, data_dir)
    _, accuracy = evaluate(model, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    assert accuracy == outcome.metrics["accuracy"]

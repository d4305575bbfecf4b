from __future__ import annotations

import json
import random

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from pydantic import ValidationError
from torch import nn

from nas.strategies.optuna_samplers import suggest
from search_spaces.sparse_mlp import SparseMLP

SEARCHED = SparseMLP(SparseMLP.Params(min_depth=1, max_depth=4, layer_sparsity_choices=[0.0, 0.5, 0.9]))
DEFAULT = SparseMLP(SparseMLP.Params())


def contains(dist: object, value: object) -> bool:
    if isinstance(dist, IntDistribution):
        return dist.low <= value <= dist.high
    assert isinstance(dist, CategoricalDistribution)
    return value in dist.choices


@pytest.mark.parametrize("space", [DEFAULT, SEARCHED], ids=["default", "layer-sparsity"])
@pytest.mark.parametrize("seed", range(8))
def test_sample_build_round_trip(space: SparseMLP, seed: int) -> None:
    arch = space.sample(random.Random(seed))
    assert json.loads(json.dumps(arch)) == arch
    assert arch == space.sample(random.Random(seed))  # reproducible

    dims = space.dimensions()
    assert set(arch) <= set(dims)
    assert all(contains(dims[key], value) for key, value in arch.items())

    model = space.build(arch, (1, 28, 28), 10)
    depth = arch["depth"]
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert list(linears) == [f"fc{i}" for i in range(depth)] + ["out"]
    assert [m.out_features for m in linears.values()] == [arch[f"width_{i}"] for i in range(depth)] + [10]
    assert linears["fc0"].in_features == 784
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)

    targets = space.layer_sparsity(arch)
    if space is DEFAULT:
        assert targets is None
    else:
        assert targets == {f"{name}.weight": arch[f"sparsity_{name}"] for name in linears}

    # every weight the architecture has is announced by weight_specs, with its actual fan-in
    specs = {spec.name: spec for spec in space.weight_specs((1, 28, 28), 10)}
    for name, layer in linears.items():
        spec = specs[f"{name}.weight"]
        assert spec.kind == "linear" and spec.kernel_size == 1 and layer.in_features in spec.in_features


def test_samples_cover_the_space() -> None:
    archs = [DEFAULT.sample(random.Random(seed)) for seed in range(200)]
    assert {a["depth"] for a in archs} == {1, 2, 3}
    assert {a["activation"] for a in archs} == {"relu", "tanh", "gelu"}
    assert {a["width_0"] for a in archs} == {32, 64, 100, 128, 256, 300}
    assert set(DEFAULT.dimensions()) == {"depth", "width_0", "width_1", "width_2", "activation"}


def test_build_uses_the_sampled_activation() -> None:
    arch = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "gelu"}
    model = DEFAULT.build(arch, (1, 8, 8), 10)
    assert [type(model.get_submodule(name)) for name in ("flatten", "act0", "act1")] == [nn.Flatten, nn.GELU, nn.GELU]


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ({"depth": 0, "activation": "relu"}, "depth 0 is not an integer in 1..3"),
        ({"depth": True, "width_0": 32, "activation": "relu"}, "depth True"),
        ({"depth": 2, "width_0": 32, "activation": "relu"}, r"missing \['width_1'\]"),
        ({"depth": 1, "width_0": 32, "width_1": 32, "activation": "relu"}, r"unexpected \['width_1'\]"),
        ({"depth": 1, "width_0": 33, "activation": "relu"}, "width_0=33 is not one of"),
        ({"depth": 1, "width_0": 32, "activation": "elu"}, "activation='elu' is not one of"),
    ],
)
def test_build_rejects_architectures_outside_the_space(arch: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DEFAULT.build(arch, (1, 8, 8), 10)


def test_weight_specs_list_each_possible_weight_with_every_fan_in() -> None:
    space = SparseMLP(SparseMLP.Params(min_depth=1, max_depth=2, width_choices=[32, 100]))
    assert [(s.name, s.kind, sorted(s.in_features)) for s in space.weight_specs((1, 8, 8), 10)] == [
        ("fc0.weight", "linear", [64]),
        ("fc1.weight", "linear", [32, 100]),
        ("out.weight", "linear", [32, 100]),
    ]


def test_layer_sparsity_keys_are_required_when_searched() -> None:
    with pytest.raises(ValueError, match=r"missing \['sparsity_fc0', 'sparsity_out'\]"):
        SEARCHED.layer_sparsity({"depth": 1, "width_0": 32, "activation": "relu"})


@pytest.mark.parametrize(
    "params",
    [
        {"min_depth": 3, "max_depth": 2},
        {"min_depth": 0},
        {"width_choices": []},
        {"width_choices": [32, 32]},
        {"activation_choices": ["relu", "swish"]},
        {"layer_sparsity_choices": [0.5, 1.0]},
        {"layer_sparsity_choices": []},
        {"depth": 2},
    ],
)
def test_params_are_validated(params: dict) -> None:
    with pytest.raises(ValidationError):
        SparseMLP.Params(**params)


def test_min_and_max_params_bound_every_built_network() -> None:
    space = SparseMLP(SparseMLP.Params(min_depth=1, max_depth=3, width_choices=[8, 32, 64]))
    rng = random.Random(0)
    counts = [sum(p.numel() for p in space.build(space.sample(rng), (1, 8, 8), 10).parameters()) for _ in range(60)]
    assert space.min_params((1, 8, 8), 10) == min(counts) == (64 + 1) * 8 + (8 + 1) * 10
    widest = {"depth": 3, "width_0": 64, "width_1": 64, "width_2": 64, "activation": "relu"}
    assert max(counts) <= space.max_params((1, 8, 8), 10)
    assert space.max_params((1, 8, 8), 10) == sum(p.numel() for p in space.build(widest, (1, 8, 8), 10).parameters())


def test_a_max_params_no_architecture_meets_is_refused_at_its_field() -> None:
    from nas.specs import JobSpec

    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(
            {"search_space": {"name": "sparse_mlp", "params": {"width_choices": [8]}}, "dataset": {"name": "digits"},
             "constraints": {"max_params": 100}}
        )
    (error,) = info.value.errors()
    assert error["loc"] == ("constraints", "max_params") and "smallest has 610" in error["msg"]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_arch_from_samples_define_by_run_through_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dims = SEARCHED.dimensions()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(n_startup_trials=4, multivariate=True, group=True, seed=0))
    depths = set()
    for _ in range(16):
        trial, asked = study.ask(), []

        def draw(key: str) -> object:
            asked.append(key)
            return suggest(trial, key, dims[key])

        arch = SEARCHED.arch_from(draw)
        assert len(asked) == len(set(asked)) and set(asked) <= set(dims)  # each key once, each a dimension
        assert list(arch) == asked and arch == trial.params  # only the asked keys, as Optuna recorded them
        model = SEARCHED.build(arch, (1, 8, 8), 10)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        study.tell(trial, sum(p.numel() for p in model.parameters()))
        depths.add(arch["depth"])
    assert len(depths) > 1

from __future__ import annotations

import json
import random
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from pydantic import ValidationError
from torch import nn

from nas import registry
from nas.sparse.masks import prunable_weights
from nas.specs import JobSpec
from nas.strategies.optuna_samplers import suggest
from nas.training import load_trained_model, run_trial
from search_spaces.sparse_rnn import SparseRNN

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DEFAULT = SparseRNN(SparseRNN.Params())
SEARCHED = SparseRNN(
    SparseRNN.Params(hidden_choices=[8, 16], max_layers=3, bidirectional_choices=[False, True], layer_sparsity_choices=[0.5, 0.9])
)
SHAPES = [(1, 8, 8), (1, 28, 28)]
MODULES = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def contains(dist: object, value: object) -> bool:
    if isinstance(dist, IntDistribution):
        return dist.low <= value <= dist.high
    assert isinstance(dist, CategoricalDistribution)
    return value in dist.choices


@pytest.mark.parametrize("space", [DEFAULT, SEARCHED], ids=["default", "searched"])
@pytest.mark.parametrize("seed", range(8))
def test_sample_build_round_trip(space: SparseRNN, seed: int) -> None:
    arch = space.sample(random.Random(seed))
    assert json.loads(json.dumps(arch)) == arch
    assert arch == space.sample(random.Random(seed))
    dims = space.dimensions()
    assert set(arch) <= set(dims) and all(contains(dims[k], v) for k, v in arch.items())

    for shape in SHAPES:
        model = space.build(arch, shape, 10)
        assert model(torch.zeros(3, *shape)).shape == (3, 10)
        recurrent = getattr(model, {"rnn_tanh": "rnn", "rnn_relu": "rnn"}.get(arch["cell"], arch["cell"]))
        assert type(recurrent) is MODULES[arch["cell"]]
        assert (recurrent.input_size, recurrent.hidden_size, recurrent.num_layers, recurrent.bidirectional) == (
            shape[2], arch["hidden"], arch["layers"], arch["bidirectional"]
        )
        if arch["cell"].startswith("rnn_"):
            assert recurrent.nonlinearity == arch["cell"].removeprefix("rnn_")
        params = sum(p.numel() for p in model.parameters())
        assert params == space.count_params(arch, shape, 10)
        assert space.min_params(shape, 10) <= params <= space.max_params(shape, 10)

        specs = {spec.name: spec for spec in space.weight_specs(shape, 10)}
        weights = prunable_weights(model)
        for name, (module, attr) in weights.items():
            kind = "linear" if name == "out.weight" else name.split(".")[0]
            assert specs[name].kind == kind and getattr(module, attr).shape[1] in specs[name].in_features, name

    targets = space.layer_sparsity(arch)
    assert space.layer_patterns(arch) is None
    if space is DEFAULT:
        assert targets is None
    else:
        assert set(targets) == set(weights)  # input and recurrent weights of every layer and direction, and out
        for name, target in targets.items():
            layer = name.split("_l")[-1].removesuffix("_reverse")
            key = "sparsity_out" if name == "out.weight" else f"sparsity_{name.split('weight_')[1][:2]}_l{layer}"
            assert target == arch[key]


def test_weight_specs_name_rnn_gru_and_lstm_weights_by_kind() -> None:
    specs = SparseRNN(SparseRNN.Params(hidden_choices=[16], max_layers=2)).weight_specs((1, 28, 28), 10)
    by_kind: dict[str, list[str]] = {}
    for spec in specs:
        by_kind.setdefault(spec.kind, []).append(spec.name)
    assert by_kind == {
        "rnn": ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1"],
        "gru": ["gru.weight_ih_l0", "gru.weight_hh_l0", "gru.weight_ih_l1", "gru.weight_hh_l1"],
        "lstm": ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1"],
        "linear": ["out.weight"],
    }
    fan_ins = {spec.name: sorted(spec.in_features) for spec in specs}
    assert fan_ins["lstm.weight_ih_l0"] == [28] and fan_ins["lstm.weight_ih_l1"] == [16] and fan_ins["out.weight"] == [16]
    # a job whose sparsifier cannot prune recurrent weights is refused at submission
    with pytest.raises(ValidationError, match="lstm weight, which this sparsifier does not support"):
        JobSpec(search_space={"name": "sparse_rnn"}, dataset={"name": "digits"}, sparsifier={"name": "channel"})


def test_the_model_reads_one_row_per_time_step() -> None:
    space = SparseRNN(SparseRNN.Params(cell_choices=["gru"], hidden_choices=[4], max_layers=1))
    model = space.build({"cell": "gru", "hidden": 4, "layers": 1, "bidirectional": False}, (1, 5, 3), 2)
    seen = []
    model.gru.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    x = torch.randn(2, 1, 5, 3)
    model(x)
    assert seen == [(2, 5, 3)]  # (batch, rows, row width)
    with torch.no_grad():  # the last row matters: the classifier reads the state after it
        assert not torch.equal(model(x), model(torch.cat([x[:, :, :-1], x[:, :, -1:] + 1], dim=2)))
    # colour images: every channel's row is one time step's features
    colour = space.build({"cell": "gru", "hidden": 4, "layers": 1, "bidirectional": False}, (3, 5, 3), 2)
    assert colour.gru.input_size == 9 and colour(torch.zeros(1, 3, 5, 3)).shape == (1, 2)


def test_max_and_min_params_are_reached() -> None:
    for shape in SHAPES:
        counts = {}
        for cell in ("rnn_tanh", "gru", "lstm"):
            for hidden in (8, 16):
                for layers in (1, 2, 3):
                    for bidirectional in (False, True):
                        arch = {"cell": cell, "hidden": hidden, "layers": layers, "bidirectional": bidirectional,
                                **{k: 0.5 for k in [f"sparsity_{t}_l{i}" for i in range(layers) for t in ("ih", "hh")]},
                                "sparsity_out": 0.5}  # fmt: skip
                        model = SEARCHED.build(arch, shape, 10)
                        counts[json.dumps(arch)] = sum(p.numel() for p in model.parameters())
        assert SEARCHED.max_params(shape, 10) == max(counts.values())
        assert SEARCHED.min_params(shape, 10) == min(counts.values())


ARCH = {"cell": "lstm", "hidden": 64, "layers": 1, "bidirectional": False}


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ({**ARCH, "layers": 0}, "arch layers=0 is not an integer in 1..2"),
        ({**ARCH, "layers": True}, "arch layers=True"),
        ({k: v for k, v in ARCH.items() if k != "hidden"}, r"missing \['hidden'\]"),
        ({**ARCH, "dropout": 0.1}, r"unexpected \['dropout'\]"),
        ({**ARCH, "cell": "transformer"}, "arch cell='transformer' is not one of"),
        ({**ARCH, "hidden": 65}, r"arch hidden=65 is not one of \[32, 64, 128\]"),
        ({**ARCH, "hidden": 64.0}, "arch hidden=64.0 is not one of"),
        ({**ARCH, "bidirectional": True}, r"arch bidirectional=True is not one of \[False\]"),
        ({**ARCH, "bidirectional": 0}, "arch bidirectional=0 is not one of"),
        ({**ARCH, "sparsity_out": 0.5}, r"unexpected \['sparsity_out'\]"),
    ],
)
def test_architectures_outside_the_space_are_refused_naming_the_key(arch: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DEFAULT.build(arch, (1, 8, 8), 10)
    with pytest.raises(ValueError, match=message):
        DEFAULT.layer_sparsity(arch)


def test_layer_sparsities_are_required_when_searched() -> None:
    arch = {"cell": "gru", "hidden": 8, "layers": 2, "bidirectional": True, "sparsity_ih_l0": 0.5, "sparsity_hh_l0": 0.9}
    with pytest.raises(ValueError, match=r"missing \['sparsity_hh_l1', 'sparsity_ih_l1', 'sparsity_out'\]"):
        SEARCHED.layer_sparsity(arch)
    arch |= {"sparsity_ih_l1": 0.9, "sparsity_hh_l1": 0.5, "sparsity_out": 0.5}
    assert SEARCHED.layer_sparsity(arch) == {
        "gru.weight_ih_l0": 0.5, "gru.weight_hh_l0": 0.9, "gru.weight_ih_l0_reverse": 0.5, "gru.weight_hh_l0_reverse": 0.9,
        "gru.weight_ih_l1": 0.9, "gru.weight_hh_l1": 0.5, "gru.weight_ih_l1_reverse": 0.9, "gru.weight_hh_l1_reverse": 0.5,
        "out.weight": 0.5,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"reads sequences .* and images .* inputs of shape \(1, 2, 8, 8\) are none"):
        SEARCHED.build(arch, (1, 2, 8, 8), 10)


@pytest.mark.parametrize(
    "params",
    [
        {"min_layers": 3, "max_layers": 2},
        {"min_layers": 0},
        {"cell_choices": []},
        {"cell_choices": ["lstm", "lstm"]},
        {"cell_choices": ["elman"]},
        {"hidden_choices": [0]},
        {"bidirectional_choices": []},
        {"layer_sparsity_choices": [1.0]},
        {"dropout": 0.1},
    ],
)
def test_params_are_validated(params: dict) -> None:
    with pytest.raises(ValidationError):
        SparseRNN.Params(**params)


def test_a_sparse_lstm_trains_on_sequential_digits_to_its_layer_sparsities(data_dir: Path) -> None:
    params = {"cell_choices": ["lstm"], "hidden_choices": [64], "max_layers": 1, "layer_sparsity_choices": [0.5, 0.75]}
    arch = {"cell": "lstm", "hidden": 64, "layers": 1, "bidirectional": False,
            "sparsity_ih_l0": 0.5, "sparsity_hh_l0": 0.75, "sparsity_out": 0.5}  # fmt: skip
    spec = JobSpec(
        search_space={"name": "sparse_rnn", "params": params},
        dataset={"name": "digits"},
        sparsifier={"name": "magnitude", "params": {"sparsity": 0.9}},
        training={"epochs": 1, "batch_size": 16, "lr": 1e-2},
    )
    outcome = run_trial(spec, arch, data_dir, lambda epoch, metrics: None)
    assert outcome.metrics["accuracy"] > 0.3  # chance is 0.1
    densities = {layer["name"]: layer["density"] for layer in outcome.layers}
    assert densities == pytest.approx({"lstm.weight_ih_l0": 0.5, "lstm.weight_hh_l0": 0.25, "out.weight": 0.5}, abs=1e-4)
    sizes = {"ih": 256 * 8, "hh": 256 * 64, "out": 10 * 64}
    expected = (0.5 * sizes["ih"] + 0.75 * sizes["hh"] + 0.5 * sizes["out"]) / sum(sizes.values())
    assert outcome.metrics["sparsity"] == pytest.approx(expected, abs=1e-3)
    model = load_trained_model(outcome.model_bytes)
    assert float((model.lstm.weight_hh_l0 == 0).float().mean()) == pytest.approx(0.75, abs=1e-4)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("sampler_id", ["tpe", "nsga2"])
def test_arch_from_samples_define_by_run_through_optuna(sampler_id: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(n_startup_trials=4, multivariate=True, group=True, seed=0),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(population_size=4, seed=0),
    }[sampler_id]()
    dims = SEARCHED.dimensions()
    study = optuna.create_study(sampler=sampler)
    layers = set()
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
        study.tell(trial, SEARCHED.count_params(arch, (1, 8, 8), 10))
        layers.add(arch["layers"])
    assert len(layers) > 1


@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_tpe_and_nsga2_propose_sparse_rnn_networks(name: str) -> None:
    params = {"hidden_choices": [8, 16], "max_layers": 3, "bidirectional_choices": [False, True],
              "layer_sparsity_choices": [0.5, 0.9]}  # fmt: skip
    spec = JobSpec(search_space={"name": "sparse_rnn", "params": params}, dataset={"name": "digits"},
                   strategy={"name": name}, budget={"max_trials": 20})  # fmt: skip
    cls = registry.strategies.get(name)
    assert cls.check_spec(cls.Params(), spec) == []
    strategy = cls(cls.Params(), SEARCHED, spec)
    for _ in range(3):
        arch = strategy.ask().arch
        assert SEARCHED.build(arch, (1, 8, 8), 10)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)

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
from search_spaces.sparse_cnn import SparseCNN, weight_name

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PATTERNS = ["dense", "unstructured", "channel", "2:4"]
DEFAULT = SparseCNN(SparseCNN.Params())
SEARCHED = SparseCNN(SparseCNN.Params(pattern_choices=PATTERNS, layer_sparsity_choices=[0.5, 0.8]))
PATTERNS_ONLY = SparseCNN(SparseCNN.Params(pattern_choices=["dense", "1:4"] + ["unstructured"]))
SPACES = {"default": DEFAULT, "searched": SEARCHED, "patterns-only": PATTERNS_ONLY}
SHAPES = [(1, 8, 8), (1, 28, 28)]


def contains(dist: object, value: object) -> bool:
    if isinstance(dist, IntDistribution):
        return dist.low <= value <= dist.high
    assert isinstance(dist, CategoricalDistribution)
    return value in dist.choices


def built_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("space_id", list(SPACES))
@pytest.mark.parametrize("seed", range(6))
def test_sample_build_round_trip(space_id: str, seed: int) -> None:
    space = SPACES[space_id]
    arch = space.sample(random.Random(seed))
    assert json.loads(json.dumps(arch)) == arch
    assert arch == space.sample(random.Random(seed))  # reproducible

    dims = space.dimensions()
    assert set(arch) <= set(dims)
    assert all(contains(dims[key], value) for key, value in arch.items())

    for shape in SHAPES:
        model = space.build(arch, shape, 10)
        assert model(torch.zeros(2, *shape)).shape == (2, 10)
        assert built_params(model) == space.count_params(arch, shape, 10)
        assert space.min_params(shape, 10) <= built_params(model) <= space.max_params(shape, 10)

        # every weight the architecture has is announced by weight_specs, with its actual fan-in and kernel
        weights = prunable_weights(model)
        specs = {spec.name: spec for spec in space.weight_specs(shape, 10)}
        for name, (module, attr) in weights.items():
            spec, weight = specs[name], getattr(module, attr)
            assert spec.kind == ("linear" if isinstance(module, nn.Linear) else "conv2d")
            assert weight.shape[1] in spec.in_features, name
            assert weight[0, 0].numel() <= spec.kernel_size

    targets, patterns = space.layer_sparsity(arch), space.layer_patterns(arch)
    if space is DEFAULT:
        assert targets is None and patterns is None
    else:
        assert set(patterns) == set(weights)  # every weight has a pattern
        assert set(targets) <= set(weights)
        for name, pattern in patterns.items():
            expected = {"dense": 0.0, "2:4": 0.5, "1:4": 0.75}.get(pattern)
            if expected is not None:
                assert targets[name] == expected
            elif space is SEARCHED:  # unstructured or channel: the searched sparsity
                assert targets[name] in (0.5, 0.8)
            else:
                assert name not in targets  # left to the sparsifier's target


def test_samples_cover_the_space_and_patterns_only_go_where_they_fit() -> None:
    archs = [SEARCHED.sample(random.Random(seed)) for seed in range(300)]
    assert {a["family"] for a in archs} == {"conv", "mobilenet"}
    assert {a["conv_blocks"] for a in archs if a["family"] == "conv"} == {1, 2, 3}
    assert {a["mobilenet_blocks"] for a in archs if a["family"] == "mobilenet"} == {1, 2, 3, 4}
    assert {a["expand_block0"] for a in archs if a["family"] == "mobilenet"} == {1, 3, 6}
    seen: dict[str, set[str]] = {}
    for arch in archs:
        for key, value in arch.items():
            if key.startswith("pattern_"):
                seen.setdefault(key.removeprefix("pattern_"), set()).add(value)
                layer = key.removeprefix("pattern_")
                # a sparsity only where the pattern leaves the density open
                assert (f"sparsity_{layer}" in arch) == (value in ("unstructured", "channel"))
    # the first convolution (1 input channel) and depthwise ones (1 per group) never get N:M; the classifier no channel
    for layer in ("conv0", "stem", "block0_depthwise", "block2_depthwise"):
        assert seen[layer] == {"dense", "unstructured", "channel"}
    assert seen["out"] == {"dense", "unstructured", "2:4"}
    assert seen["conv1"] == seen["fc0"] == seen["block1_project"] == set(PATTERNS)
    assert "block0_expand" in seen and "block3_expand" in seen


def test_the_conv_family_is_the_lottery_ticket_conv_networks() -> None:
    space = SparseCNN(SparseCNN.Params(families=["conv"], conv_width_choices=[64, 128, 256], fc_width_choices=[256],
                                       fc_min_depth=2))  # fmt: skip
    widths = [64, 64, 128, 128, 256, 256]
    conv6 = {"family": "conv", "conv_blocks": 3, "fc_depth": 2, "width_fc0": 256, "width_fc1": 256}
    conv6 |= {f"width_conv{i}": w for i, w in enumerate(widths)} | {f"kernel_conv{i}": 3 for i in range(6)}
    model = space.build(conv6, (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 64, (3, 3), (1, 1)), (64, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1)),
        (128, 128, (3, 3), (1, 1)), (128, 256, (3, 3), (1, 1)), (256, 256, (3, 3), (1, 1)),
    ]  # fmt: skip
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert model.fc0.in_features == 256 * 4 * 4  # 32 -> 16 -> 8 -> 4, as in the paper
    assert [model.fc0.out_features, model.fc1.out_features, model.out.out_features] == [256, 256, 10]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_pooling_stops_once_the_feature_map_is_too_small() -> None:
    space = SparseCNN(SparseCNN.Params(families=["conv"], conv_min_blocks=5, conv_max_blocks=5, conv_width_choices=[8],
                                       fc_min_depth=0, fc_max_depth=0))  # fmt: skip
    arch = space.sample(random.Random(0))
    model = space.build(arch, (1, 8, 8), 10)  # 8 -> 4 -> 2 -> 1, then two blocks without pooling
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert model.out.in_features == 8
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert built_params(model) == space.max_params((1, 8, 8), 10) == space.min_params((1, 8, 8), 10)


def test_mobilenet_blocks_are_inverted_residuals() -> None:
    space = SparseCNN(SparseCNN.Params(families=["mobilenet"], mobilenet_downsample_at=[1]))
    arch = {"family": "mobilenet", "mobilenet_blocks": 3, "width_stem": 16,
            "expand_block0": 1, "kernel_block0": 3, "width_block0": 16,
            "expand_block1": 6, "kernel_block1": 5, "width_block1": 24,
            "expand_block2": 3, "kernel_block2": 3, "width_block2": 24}  # fmt: skip
    model = space.build(arch, (1, 28, 28), 10)
    assert list(prunable_weights(model)) == [
        "stem.weight", "block0.body.depthwise.weight", "block0.body.project.weight",
        "block1.body.expand.weight", "block1.body.depthwise.weight", "block1.body.project.weight",
        "block2.body.expand.weight", "block2.body.depthwise.weight", "block2.body.project.weight", "out.weight",
    ]  # fmt: skip
    b1 = model.block1.body
    assert (b1.expand.in_channels, b1.expand.out_channels, b1.expand.kernel_size) == (16, 96, (1, 1))
    assert (b1.depthwise.groups, b1.depthwise.kernel_size, b1.depthwise.stride) == (96, (5, 5), (2, 2))
    assert (b1.project.in_channels, b1.project.out_channels) == (96, 24)
    assert isinstance(b1.project_bn, nn.BatchNorm2d)
    assert [model.block0.residual, model.block1.residual, model.block2.residual] == [True, False, True]
    # the residual adds the block's input: a zeroed body passes it through
    block = model.block2.eval()
    for p in block.body.project_bn.parameters():
        nn.init.zeros_(p)
    x = torch.randn(1, 24, 14, 14)
    assert torch.equal(block(x), x)
    assert {weight_name(layer) for layer in ("stem", "block1_expand", "out")} == {
        "stem.weight", "block1.body.expand.weight", "out.weight"
    }


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"families": ["conv"], "conv_batchnorm": True, "conv_kernel_choices": [3, 5], "fc_min_depth": 0},
        {"families": ["mobilenet"], "mobilenet_expand_choices": [1, 2, 4], "mobilenet_stem_choices": [8, 16]},
    ],
)
def test_max_and_min_params_are_those_of_the_largest_and_smallest_networks(params: dict) -> None:
    space = SparseCNN(SparseCNN.Params(**params))
    for shape in SHAPES:
        counts = [built_params(space.build(space.sample(random.Random(s)), shape, 10)) for s in range(60)]
        assert max(counts) <= space.max_params(shape, 10) and min(counts) >= space.min_params(shape, 10)
    # and the extremes are reached by real networks, built and counted
    p = space.params
    for pick, bound in ((max, space.max_params), (min, space.min_params)):
        candidates = []
        if "conv" in p.families:
            for blocks in range(p.conv_min_blocks, p.conv_max_blocks + 1):
                for fcs in range(p.fc_min_depth, p.fc_max_depth + 1):
                    arch = {"family": "conv", "conv_blocks": blocks, "fc_depth": fcs}
                    for i in range(2 * blocks):
                        arch |= {f"width_conv{i}": pick(p.conv_width_choices), f"kernel_conv{i}": pick(p.conv_kernel_choices)}
                    candidates.append(arch | {f"width_fc{j}": pick(p.fc_width_choices) for j in range(fcs)})
        if "mobilenet" in p.families:
            for blocks in range(p.mobilenet_min_blocks, p.mobilenet_max_blocks + 1):
                arch = {"family": "mobilenet", "mobilenet_blocks": blocks, "width_stem": pick(p.mobilenet_stem_choices)}
                for b in range(blocks):
                    arch |= {f"expand_block{b}": pick(p.mobilenet_expand_choices),
                             f"kernel_block{b}": pick(p.mobilenet_kernel_choices),
                             f"width_block{b}": pick(p.mobilenet_width_choices)}  # fmt: skip
                candidates.append(arch)
        for shape in SHAPES:
            assert bound(shape, 10) == pick(built_params(space.build(a, shape, 10)) for a in candidates)


CONV1 = {"family": "conv", "conv_blocks": 1, "width_conv0": 16, "kernel_conv0": 3, "width_conv1": 32, "kernel_conv1": 3,
         "fc_depth": 1, "width_fc0": 64}  # fmt: skip


@pytest.mark.parametrize(
    ("space_id", "change", "message"),
    [
        ("default", {"family": "resnet"}, r"arch family='resnet' is not one of \['conv', 'mobilenet'\]"),
        ("default", {"conv_blocks": True}, "arch conv_blocks=True is not an integer in 1..3"),
        ("default", {"conv_blocks": 4}, "arch conv_blocks=4 is not an integer in 1..3"),
        ("default", {"conv_blocks": 2}, r"conv_blocks 2 and fc_depth 1: missing \['width_conv2', 'kernel_conv2'"),
        ("default", {"fc_depth": None}, r"family 'conv': missing \['fc_depth'\]"),
        ("default", {"width_conv1": 33}, r"arch width_conv1=33 is not one of \[16, 32, 64\]"),
        ("default", {"width_conv1": 32.0}, "arch width_conv1=32.0 is not one of"),
        ("default", {"kernel_conv0": 5}, r"arch kernel_conv0=5 is not one of \[3\]"),
        ("default", {"width_fc1": 64}, r"unexpected \['width_fc1'\]"),
        ("default", {"mobilenet_blocks": 1}, r"unexpected \['mobilenet_blocks'\]"),
        ("default", {"sparsity_conv0": 0.5}, r"unexpected \['sparsity_conv0'\]"),
        ("searched", {}, r"missing \['pattern_conv0', 'pattern_conv1', 'pattern_fc0', 'pattern_out'\]"),
        ("searched", {"pattern_conv0": "2:4", "pattern_conv1": "dense", "pattern_fc0": "dense", "pattern_out": "dense"},
         r"arch pattern_conv0='2:4' is not one of \['dense', 'unstructured', 'channel'\]"),
        ("searched", {"pattern_conv0": "dense", "pattern_conv1": "dense", "pattern_fc0": "dense", "pattern_out": "channel"},
         "arch pattern_out='channel' is not one of"),
        ("searched", {"pattern_conv0": "dense", "pattern_conv1": "2:4", "pattern_fc0": "channel", "pattern_out": "dense"},
         r"missing \['sparsity_fc0'\]"),
        ("searched", {"pattern_conv0": "dense", "pattern_conv1": "2:4", "pattern_fc0": "channel", "pattern_out": "dense",
                      "sparsity_fc0": 0.5, "sparsity_conv1": 0.5}, r"unexpected \['sparsity_conv1'\]"),
        ("searched", {"pattern_conv0": "dense", "pattern_conv1": "2:4", "pattern_fc0": "channel", "pattern_out": "dense",
                      "sparsity_fc0": 0.3}, r"arch sparsity_fc0=0.3 is not one of \[0.5, 0.8\]"),
    ],
)
def test_architectures_outside_the_space_are_refused_naming_the_key(space_id: str, change: dict, message: str) -> None:
    space = SPACES[space_id]
    arch = {key: value for key, value in (CONV1 | change).items() if value is not None}
    for call in (lambda: space.build(arch, (1, 8, 8), 10), lambda: space.layer_sparsity(arch),
                 lambda: space.layer_patterns(arch), lambda: space.count_params(arch, (1, 8, 8), 10)):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            call()


def test_mobilenet_keys_follow_the_expansion() -> None:
    space = SparseCNN(SparseCNN.Params(families=["mobilenet"], layer_sparsity_choices=[0.5]))
    arch = {"family": "mobilenet", "mobilenet_blocks": 1, "width_stem": 16, "expand_block0": 1, "kernel_block0": 3,
            "width_block0": 16, "sparsity_stem": 0.5, "sparsity_block0_depthwise": 0.5,
            "sparsity_block0_project": 0.5, "sparsity_out": 0.5}  # fmt: skip
    assert set(space.layer_sparsity(arch)) == {"stem.weight", "block0.body.depthwise.weight",
                                               "block0.body.project.weight", "out.weight"}  # fmt: skip
    with pytest.raises(ValueError, match=r"missing \['sparsity_block0_expand'\]"):
        space.layer_sparsity(arch | {"expand_block0": 6})
    with pytest.raises(ValueError, match=r"unexpected \['sparsity_block0_expand'\]"):
        space.layer_sparsity(arch | {"sparsity_block0_expand": 0.5})
    with pytest.raises(ValueError, match=r"needs image inputs .* a table of 64 features .* sparse_mlp"):
        space.build(arch, (64,), 10)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"conv_min_blocks": 3, "conv_max_blocks": 2}, "conv_min_blocks 3 exceeds conv_max_blocks 2"),
        ({"fc_min_depth": 3, "fc_max_depth": 2}, "fc_min_depth"),
        ({"mobilenet_min_blocks": 0}, "mobilenet_min_blocks"),
        ({"families": []}, "families"),
        ({"families": ["conv", "conv"]}, "families repeats a value"),
        ({"conv_width_choices": [16, 16]}, "conv_width_choices repeats a value"),
        ({"conv_kernel_choices": [3, 4]}, "kernel sizes must be odd"),
        ({"mobilenet_kernel_choices": [2]}, "kernel sizes must be odd"),
        ({"pattern_choices": ["sparse"]}, "unknown sparsity pattern 'sparse'"),
        ({"pattern_choices": ["4:2"]}, "needs 1 <= N < M <= 64"),
        ({"pattern_choices": ["2:4:8"]}, "unknown sparsity pattern"),
        ({"families": ["conv"], "pattern_choices": ["2:4"]}, r"leave no pattern for layer\(s\) \['conv0'\]"),
        ({"pattern_choices": ["channel", "2:4"], "fc_width_choices": [10], "mobilenet_width_choices": [10]},
         r"leave no pattern for layer\(s\) \['out'\]"),
        ({"pattern_choices": ["unstructured", "2:8"], "conv_width_choices": [12, 16], "fc_width_choices": [12],
          "mobilenet_width_choices": [12], "mobilenet_stem_choices": [12]}, "pattern '2:8' fits no layer"),
        ({"layer_sparsity_choices": [1.0]}, "layer_sparsity_choices"),
        ({"depth": 2}, "depth"),
    ],
)
def test_params_are_validated_naming_the_field(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SparseCNN.Params(**params)


def test_weight_specs_let_submission_refuse_a_sparsifier_that_cannot_run() -> None:
    # nm groups along the input channels; the first convolution has one (MNIST is grey-scale)
    with pytest.raises(ValidationError, match=r"conv0\.weight can have 1 input features") as refused:
        JobSpec(search_space={"name": "sparse_cnn"}, dataset={"name": "mnist"}, sparsifier={"name": "nm"})
    assert refused.value.errors()[0]["loc"][:2] == ("sparsifier", "params")
    JobSpec(search_space={"name": "sparse_cnn", "params": {"pattern_choices": PATTERNS}}, dataset={"name": "mnist"},
            sparsifier={"name": "magnitude"})  # fmt: skip


def test_a_patterned_network_trains_on_digits_to_its_layer_densities(data_dir: Path) -> None:
    params = {"families": ["conv"], "pattern_choices": PATTERNS, "layer_sparsity_choices": [0.5, 0.8]}
    arch = CONV1 | {"pattern_conv0": "channel", "sparsity_conv0": 0.5, "pattern_conv1": "2:4",
                    "pattern_fc0": "unstructured", "sparsity_fc0": 0.8, "pattern_out": "dense"}  # fmt: skip
    spec = JobSpec(
        search_space={"name": "sparse_cnn", "params": params},
        dataset={"name": "digits"},
        sparsifier={"name": "magnitude", "params": {"sparsity": 0.9}},
        training={"epochs": 1, "batch_size": 32, "lr": 3e-3},
    )
    outcome = run_trial(spec, arch, data_dir, lambda epoch, metrics: None)
    assert outcome.metrics["accuracy"] > 0.3  # chance is 0.1
    layers = {layer["name"]: layer for layer in outcome.layers}
    assert {name: layer["pattern"] for name, layer in layers.items()} == {
        "conv0.weight": "channel", "conv1.weight": "2:4", "fc0.weight": "unstructured", "out.weight": "dense"
    }  # fmt: skip
    assert {name: layer["density"] for name, layer in layers.items()} == pytest.approx(
        {"conv0.weight": 0.5, "conv1.weight": 0.5, "fc0.weight": 0.2, "out.weight": 1.0}, abs=1e-4
    )
    sizes = {"conv0.weight": 16 * 9, "conv1.weight": 32 * 16 * 9, "fc0.weight": 64 * 32 * 16, "out.weight": 10 * 64}
    expected = (0.5 * sizes["conv0.weight"] + 0.5 * sizes["conv1.weight"] + 0.8 * sizes["fc0.weight"]) / sum(sizes.values())
    assert outcome.metrics["sparsity"] == pytest.approx(expected, abs=1e-3)
    model = load_trained_model(outcome.model_bytes)
    assert int((model.conv0.weight.flatten(1) != 0).any(dim=1).sum()) == 8  # whole channels gone


def optuna_archs(space: SparseCNN, sampler: optuna.samplers.BaseSampler, n: int) -> list[tuple[dict, list[str]]]:
    """``n`` architectures drawn define-by-run through Optuna trials, with the keys each trial was asked for.

    Every trial is told its network's parameter count, so the sampler models the results it saw.
    """
    dims = space.dimensions()
    study = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(n):
        trial, asked = study.ask(), []

        def draw(key: str) -> object:
            asked.append(key)
            return suggest(trial, key, dims[key])

        arch = space.arch_from(draw)
        assert arch == trial.params  # Optuna recorded exactly the arch's keys and values
        study.tell(trial, built_params(space.build(arch, (1, 8, 8), 10)))
        out.append((arch, asked))
    return out


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("space_id", ["searched", "patterns-only"])
@pytest.mark.parametrize("sampler_id", ["tpe", "nsga2"])
def test_arch_from_samples_define_by_run_through_optuna(space_id: str, sampler_id: str) -> None:
    space = SPACES[space_id]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(n_startup_trials=4, multivariate=True, group=True, seed=0),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(population_size=4, seed=0),
    }[sampler_id]()
    dims = space.dimensions()
    archs = optuna_archs(space, sampler, 16)
    for arch, asked in archs:
        assert len(asked) == len(set(asked)) and set(asked) <= set(dims)  # each key once, each a dimension
        assert list(arch) == asked  # the arch holds only the keys it asked for
        model = space.build(arch, (1, 8, 8), 10)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert {arch["family"] for arch, _ in archs} == {"conv", "mobilenet"}


def test_sample_draws_each_key_uniformly_in_arch_froms_order() -> None:
    dims = SEARCHED.dimensions()
    rng = random.Random()

    def draw(key: str) -> object:
        dist = dims[key]
        return rng.choice(dist.choices) if isinstance(dist, CategoricalDistribution) else rng.randint(dist.low, dist.high)

    for seed in range(20):
        rng.seed(seed)
        arch = SEARCHED.arch_from(draw)
        assert arch == SEARCHED.sample(random.Random(seed))


@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_tpe_and_nsga2_propose_sparse_cnn_networks(name: str) -> None:
    params = {"pattern_choices": PATTERNS, "layer_sparsity_choices": [0.5, 0.8]}
    spec = JobSpec(search_space={"name": "sparse_cnn", "params": params}, dataset={"name": "digits"},
                   strategy={"name": name}, budget={"max_trials": 20})  # fmt: skip
    cls = registry.strategies.get(name)
    assert cls.check_spec(cls.Params(), spec) == []
    strategy = cls(cls.Params(), SEARCHED, spec)
    for _ in range(3):
        arch = strategy.ask().arch
        assert SEARCHED.build(arch, (1, 8, 8), 10)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)

"""The dass_darts search space: DARTS cells of score-masked layers, genotypes and their derivation from α."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from pydantic import ValidationError
from torch import nn

from nas.dass.genotype import OPS, Genotype, derive, edge_count
from nas.dass.network import Supernet
from nas.sparse.layers import SparseConv2d, SparseLinear, topk_mask
from nas.sparse.masks import prunable_weights
from search_spaces.dass_darts import DassDarts

TINY = DassDarts(DassDarts.Params(cells=2, channels=4, nodes=2))
DEFAULT = DassDarts(DassDarts.Params())
MNIST = DassDarts(DassDarts.Params(cells=3, channels=6, nodes=2, stem_stride=2))
SHAPES = [((1, 8, 8), DEFAULT), ((1, 28, 28), MNIST), ((1, 8, 8), TINY)]


def param_count(model: nn.Module) -> int:
    """Parameters as the trial metrics count them: the scores behind score masks are not the model's."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith(".scores"))


@pytest.mark.parametrize(("shape", "space"), SHAPES, ids=["digits", "mnist", "tiny"])
def test_supernet_and_cells_build_and_run(shape: tuple[int, ...], space: DassDarts, torch_single_thread: None) -> None:
    for arch in [{"kind": "supernet", "k": 0.05}, space.sample(random.Random(0)), space.sample(random.Random(1))]:
        model = space.build(arch, shape, 10)
        assert model(torch.randn(3, *shape)).shape == (3, 10)
        # every conv and the classifier carry DASS's scores, starting dense
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert layers and all(isinstance(m, (SparseConv2d, SparseLinear)) and m.k == 1.0 for m in layers)
        assert isinstance(model.classifier, SparseLinear)
        assert isinstance(model, Supernet) == (arch["kind"] == "supernet")


@pytest.mark.parametrize(("shape", "space"), SHAPES, ids=["digits", "mnist", "tiny"])
def test_weight_specs_and_param_counts_match_built_models(shape: tuple[int, ...], space: DassDarts) -> None:
    specs: dict[str, list] = {}
    for spec in space.weight_specs(shape, 10):
        specs.setdefault(spec.name, []).append(spec)
    supernet = space.build({"kind": "supernet"}, shape, 10)
    assert param_count(supernet) == space.max_params(shape, 10)
    archs = [space.sample(random.Random(seed)) for seed in range(6)]
    for model in [supernet, *(space.build(arch, shape, 10) for arch in archs)]:
        assert space.min_params(shape, 10) <= param_count(model) <= space.max_params(shape, 10)
        for name, (module, attr) in prunable_weights(model).items():
            weight = getattr(module, attr)
            kind = "linear" if isinstance(module, nn.Linear) else "conv2d"
            fan_in = weight.shape[1]
            area = weight[0, 0].numel() if kind == "conv2d" else 1
            assert any(s.kind == kind and s.kernel_size == area and fan_in in s.in_features for s in specs[name]), name


def test_extreme_cells_bound_the_derived_networks() -> None:
    shape = (1, 8, 8)
    heavy = {k: ("sep_conv_5x5" if k.endswith("_op") else 0) for k in Genotype.keys(DEFAULT.params.nodes)}
    light = {k: ("max_pool_3x3" if k.endswith("_op") else (2 if k.startswith("reduce") and k[7] != "0" else 0))
             for k in Genotype.keys(DEFAULT.params.nodes)}  # fmt: skip
    assert param_count(DEFAULT.build({"kind": "cell", **heavy}, shape, 10)) <= DEFAULT.max_params(shape, 10)
    assert param_count(DEFAULT.build({"kind": "cell", **light}, shape, 10)) == DEFAULT.min_params(shape, 10)


@pytest.mark.parametrize("seed", range(5))
def test_sample_is_a_reproducible_point_of_the_dimensions(seed: int) -> None:
    space = DassDarts(DassDarts.Params(sparsity_choices=[0.9, 0.95]))
    arch = space.sample(random.Random(seed))
    assert arch == space.sample(random.Random(seed)) and json.loads(json.dumps(arch)) == arch
    dims = space.dimensions()
    assert set(arch) == set(dims)
    for key, value in arch.items():
        dist = dims[key]
        assert (dist.low <= value <= dist.high) if isinstance(dist, IntDistribution) else value in dist.choices
    assert isinstance(dims["normal_0_0_op"], CategoricalDistribution) and "none" not in dims["normal_0_0_op"].choices
    for node in range(space.params.nodes):  # two distinct inputs per node
        assert arch[f"normal_{node}_0_input"] != arch[f"normal_{node}_1_input"]


def test_samples_cover_the_operations() -> None:
    archs = [DEFAULT.sample(random.Random(seed)) for seed in range(100)]
    assert {a["normal_0_0_op"] for a in archs} == set(OPS) - {"none"}
    restricted = DassDarts(DassDarts.Params(operations=["none", "skip_connect", "sep_conv_3x3"]))
    assert {restricted.sample(random.Random(s))["reduce_1_1_op"] for s in range(40)} == {"skip_connect", "sep_conv_3x3"}


def test_layer_sparsity_covers_every_weight_of_a_cell() -> None:
    arch = {**TINY.sample(random.Random(3)), "sparsity": 0.95}
    model = TINY.build(arch, (1, 8, 8), 10)
    assert TINY.layer_sparsity(arch) == {name: 0.95 for name in prunable_weights(model)}
    assert TINY.layer_sparsity(TINY.sample(random.Random(3))) is None
    assert TINY.layer_sparsity({"kind": "supernet", "k": 0.1}) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "graph"}, "kind='graph' is not 'supernet' or 'cell'"),
        ({"normal_1_0_op": "none"}, "normal_1_0_op='none' is not one of"),
        ({"normal_1_0_op": "conv_7x7"}, "normal_1_0_op='conv_7x7' is not one of"),
        ({"reduce_0_1_input": 2}, r"reduce_0_1_input=2 is not an integer in 0..1"),
        ({"reduce_1_1_input": True}, "reduce_1_1_input=True"),
        ({"sparsity": 1.0}, r"sparsity=1.0 is not a fraction in \[0, 1\)"),
        ({"depth": 3}, r"unexpected \['depth'\]"),
        ({"normal_1_1_op": None}, "normal_1_1_op=None"),
    ],
)
def test_bad_cells_are_refused_by_key(change: dict, message: str) -> None:
    arch = {**TINY.sample(random.Random(0)), **change}
    with pytest.raises(ValueError, match=message):
        TINY.build(arch, (1, 8, 8), 10)


def test_bad_supernets_and_params_are_refused() -> None:
    arch = TINY.sample(random.Random(0))
    del arch["normal_1_1_input"]
    with pytest.raises(ValueError, match="missing normal_1_1_input"):
        TINY.layer_sparsity(arch)
    with pytest.raises(ValueError, match=r"k=0 is not a keep fraction in \(0, 1\]"):
        TINY.build({"kind": "supernet", "k": 0}, (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"unexpected \['nodes'\]"):
        TINY.build({"kind": "supernet", "nodes": 3}, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="needs image inputs"):
        TINY.build({"kind": "supernet"}, (8, 8), 10)
    with pytest.raises(ValidationError, match="must be even"):
        DassDarts.Params(channels=5)
    with pytest.raises(ValidationError, match="other than 'none'"):
        DassDarts.Params(operations=["none"])
    with pytest.raises(ValidationError, match="repeats"):
        DassDarts.Params(operations=["skip_connect", "skip_connect"])


def weights_with(nodes: int, picks: dict[int, tuple[int, float]], none: dict[int, float] | None = None) -> list[list[float]]:
    """Rows of operation weights (one per supernet edge), 0.1 everywhere but ``picks[edge] = (op, w)``."""
    rows = [[0.1] * len(OPS) for _ in range(edge_count(nodes))]
    for edge, (op, w) in picks.items():
        rows[edge][op] = w
    for edge, w in (none or {}).items():
        rows[edge][0] = w
    return rows


def test_derive_keeps_the_two_strongest_edges_and_their_best_non_none_op() -> None:
    # nodes=3: node 0 reads edges 0-1, node 1 edges 2-4, node 2 edges 5-8
    normal = weights_with(
        3,
        {0: (4, 0.5), 1: (3, 0.4), 2: (5, 0.3), 3: (1, 0.2), 4: (6, 0.6), 6: (2, 0.7), 8: (7, 0.8)},
        none={3: 0.99, 5: 0.95},  # `none` is ignored, however strong
    )
    reduce = weights_with(3, {})  # all equal: ties go to the lower input and the first non-none op
    genotype = derive({"normal": normal, "reduce": reduce}, 3, OPS)
    assert genotype.normal == (
        ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("sep_conv_5x5", 0), ("dil_conv_3x3", 2),
        ("avg_pool_3x3", 1), ("dil_conv_5x5", 3),
    )  # fmt: skip
    assert genotype.reduce == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 3
    assert Genotype.from_arch(genotype.to_arch(), 3, OPS) == genotype


def test_supernet_genotype_is_derived_from_the_softmax_of_alpha() -> None:
    model = DEFAULT.build({"kind": "supernet"}, (1, 8, 8), 10)
    with torch.no_grad():
        model.alphas_normal.normal_()
        model.alphas_reduce.normal_()
    expected = derive(
        {"normal": model.alphas_normal.softmax(-1).tolist(), "reduce": model.alphas_reduce.softmax(-1).tolist()},
        DEFAULT.params.nodes,
        OPS,
    )
    assert model.genotype() == expected
    DEFAULT.build(expected.to_arch(), (1, 8, 8), 10)  # a derived genotype is an architecture of the space


@pytest.mark.parametrize("k", [0.5, 0.05, 0.01])
def test_sparse_conv_keeps_exactly_hydras_count(k: float) -> None:
    model = DEFAULT.build(DEFAULT.sample(random.Random(0)), (1, 8, 8), 10)
    for module in model.modules():
        if isinstance(module, (SparseConv2d, SparseLinear)):
            module.k = k
            n = module.weight.numel()
            assert int(module.score_mask.mask.sum()) == n - int((1 - k) * n)
            assert int((module.weight != 0).sum()) <= n - int((1 - k) * n)
    assert torch.equal(topk_mask(torch.arange(10.0), 0.3), torch.tensor([0.0] * 7 + [1.0] * 3))


def test_importing_the_space_and_strategy_does_not_import_torch() -> None:
    code = "import sys, search_spaces.dass_darts, nas.strategies.dass, nas.dass.genotype; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

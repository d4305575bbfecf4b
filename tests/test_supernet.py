"""The supernet search space: sampling, building, and weight sharing between the supernet and its sub-networks."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from nas import registry
from search_spaces.supernet import SupernetSpace

DIGITS = ((1, 8, 8), 10)


@pytest.fixture
def space() -> SupernetSpace:
    return SupernetSpace(SupernetSpace.Params())


def test_registered_and_importing_it_does_not_import_torch() -> None:
    assert registry.search_spaces.get("supernet") is SupernetSpace
    code = "import sys, search_spaces.supernet; assert 'torch' not in sys.modules and 'optuna' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_samples_are_valid_and_cover_the_dimensions(space: SupernetSpace) -> None:
    rng = random.Random(0)
    dims = space.dimensions()
    for _ in range(50):
        arch = space.sample(rng)
        space.layout(arch, *DIGITS)  # parses
        for key, value in arch.items():
            assert key in dims and value in dims[key].choices
    assert space.largest()["depth_0"] == 3 and space.smallest()["expand_1_0"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"depth_0": 4}, "depth_0=4"),
        ({"expand_0_0": 5}, "expand_0_0=5"),
        ({"kernel_1_0": 4}, "kernel_1_0=4"),
        ({"expand_0_2": 2}, "expand_0_2"),  # a block beyond the stage's depth
        ({"depth_0": True}, "depth_0=True"),
    ],
)
def test_bad_arch_names_the_key(space: SupernetSpace, change: dict, message: str) -> None:
    arch = {**space.smallest(), **change}
    with pytest.raises(ValueError, match=message):
        space.build(arch, *DIGITS)


def test_params_refuse_inconsistent_stages() -> None:
    with pytest.raises(ValueError, match="stage_strides"):
        SupernetSpace.Params(stage_channels=[8, 16, 32], stage_strides=[1, 2])
    with pytest.raises(ValueError, match="odd"):
        SupernetSpace.Params(kernel_choices=[3, 4])


def test_param_counts_and_weight_specs_match_built_models(space: SupernetSpace, torch_single_thread: None) -> None:
    from nas.sparse.masks import prunable_weights

    largest = space.build(space.largest(), *DIGITS)
    assert sum(p.numel() for p in largest.parameters()) == space.max_params(*DIGITS)
    assert [spec.name for spec in space.weight_specs(*DIGITS)] == list(prunable_weights(largest))
    rng = random.Random(1)
    for _ in range(5):
        arch = space.sample(rng)
        model = space.build(arch, *DIGITS)
        assert sum(p.numel() for p in model.parameters()) == space.layout(arch, *DIGITS).params()
        assert set(prunable_weights(model)) <= set(prunable_weights(largest))


def _trained_pruned_supernet(space: SupernetSpace, input_shape: tuple[int, ...]):
    """A supernet whose BatchNorm statistics and weights are not at their initial values, 60% pruned."""
    import torch

    from nas.sparse.masks import magnitude_prune

    torch.manual_seed(0)
    supernet = space.build_supernet(input_shape, 10)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
    rng = random.Random(0)
    x = torch.randn(16, *input_shape)
    supernet.train()
    for _ in range(4):
        supernet.set_active(space.layout(space.sample(rng), input_shape, 10))
        optimizer.zero_grad()
        supernet(x).square().mean().backward()
        optimizer.step()
    magnitude_prune(supernet, 0.6, {}, "global")
    supernet.set_active(None)
    supernet(x)  # the whole supernet's statistics too
    return supernet.eval()


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28)])
def test_extracted_subnetwork_computes_what_the_supernet_does_with_it_active(
    input_shape: tuple[int, ...], torch_single_thread: None
) -> None:
    import torch

    from nas.sparse.masks import masks

    params = {} if input_shape[-1] == 8 else {"stem_stride": 2, "stage_strides": [2, 2]}
    space = SupernetSpace(SupernetSpace.Params(**params))
    supernet = _trained_pruned_supernet(space, input_shape)
    x = torch.randn(8, *input_shape)
    rng = random.Random(2)
    for arch in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(4))]:
        supernet.set_active(space.layout(arch, input_shape, 10))
        expected = supernet(x)
        sub = space.extract(supernet, arch).eval()
        assert torch.equal(sub(x), expected), arch
        sub_masks = masks(sub)
        assert set(sub_masks) == set(masks(supernet)) & set(sub_masks)
        assert sub_masks  # the sub-network keeps its slice of the masks, as masks
        # shared weights: the first hidden channels and the kernel's centre
        k = arch["kernel_0_0"]
        big = supernet.stages[0][0].dw.conv.weight
        off = (big.shape[-1] - k) // 2
        hidden = sub.stages[0][0].dw.conv.weight.shape[0]
        assert torch.equal(sub.stages[0][0].dw.conv.weight, big[:hidden, :, off : off + k, off : off + k])
    supernet.set_active(None)


def test_whole_supernet_equals_the_largest_standalone_network(space: SupernetSpace, torch_single_thread: None) -> None:
    import torch

    from nas.sparse.serialization import load_model, save_model

    supernet = _trained_pruned_supernet(space, (1, 8, 8))
    largest = space.build(space.largest(), *DIGITS)
    load_model(largest, save_model(supernet, {}))  # same state_dict names and shapes
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(largest.eval()(x), supernet(x))
    supernet.set_active(space.layout(space.largest(), *DIGITS))
    assert torch.allclose(supernet(x), largest(x), atol=1e-6)


def test_untracked_subnetwork_leaves_shared_statistics_alone(space: SupernetSpace, torch_single_thread: None) -> None:
    import torch

    supernet = space.build_supernet(*DIGITS).train()
    before = {k: v.clone() for k, v in supernet.state_dict().items() if "running" in k or "num_batches" in k}
    supernet.set_active(space.layout(space.smallest(), *DIGITS), track_stats=False)
    supernet(torch.randn(8, 1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items() if k in before)
    supernet.set_active(space.layout(space.smallest(), *DIGITS))
    supernet(torch.randn(8, 1, 8, 8))
    mean = supernet.stages[0][0].expand.bn.running_mean
    hidden = 8 * 2
    assert not torch.equal(mean[:hidden], before["stages.0.0.expand.bn.running_mean"][:hidden])
    assert torch.equal(mean[hidden:], before["stages.0.0.expand.bn.running_mean"][hidden:])


def test_set_active_refuses_a_layout_outside_the_supernet(torch_single_thread: None) -> None:
    small = SupernetSpace(SupernetSpace.Params(expand_choices=[2]))
    big = SupernetSpace(SupernetSpace.Params(expand_choices=[2, 6]))
    supernet = small.build_supernet(*DIGITS)
    with pytest.raises(ValueError, match="not inside"):
        supernet.set_active(big.layout(big._uniform(3, 6, 5), *DIGITS))


def test_the_space_refuses_flat_inputs(space: SupernetSpace) -> None:
    with pytest.raises(ValueError, match="channels, height, width"):
        space.build(space.smallest(), (64,), 10)


def test_any_strategy_can_train_a_sub_network_under_a_sparsifier(torch_single_thread: None, tmp_path) -> None:
    from nas.specs import JobSpec
    from nas.training import load_trained_model, run_trial

    spec = JobSpec.model_validate(
        {
            "search_space": {"name": "supernet", "params": {"stage_channels": [8, 12], "depth_choices": [1, 2]}},
            "dataset": {"name": "digits"},
            "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.6}},
            "training": {"epochs": 1, "batch_size": 128},
        }
    )
    space = registry.search_spaces.create("supernet", spec.search_space.params)
    outcome = run_trial(spec, space.sample(random.Random(3)), tmp_path, lambda epoch, metrics: None)
    assert outcome.metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert type(load_trained_model(outcome.model_bytes)).__name__ == "MobileNet"

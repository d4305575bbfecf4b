"""The model_sparsity space over models trained here and exported to ONNX, without Ray.

A CNN on the digits and an MLP on a table are trained in the test, exported with torch.onnx.export
and described as the store describes an uploaded model, in a node catalog of their own. The space
builds them with their trained weights; a job whose data does not fit the model, or that names a
model the caller has not, is refused at the field; a trial fine-tunes from the trained weights
under each sparsifier, the lottery ticket rewinding to them; the latency predictor refuses an
allocation too slow for the job's target before it trains.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from nas import registry
from nas.metrics import beside_baseline
from nas.models.stored import scoped_model_catalog
from nas.specs import JobSpec
from nas.training import evaluate, load_data, load_trained_model, run_trial
from search_spaces.model_sparsity import ModelSparsity, groups
from tests.pretrained import TABLE, digits_cnn, node_catalog, table_mlp

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The two models, trained and exported: ``{"cnn": (id, accuracy), "mlp": (id, accuracy), "catalog": ...}``."""
    torch.set_num_threads(1)
    (cnn, cnn_accuracy), (mlp, mlp_accuracy) = digits_cnn(), table_mlp()
    catalog, (cnn_id, mlp_id) = node_catalog(tmp_path_factory.mktemp("models"), [cnn, mlp])
    return {"cnn": (cnn_id, cnn_accuracy), "mlp": (mlp_id, mlp_accuracy), "catalog": catalog}


@pytest.fixture
def catalog(trained: dict[str, Any]) -> Iterator[None]:
    with scoped_model_catalog(trained["catalog"]):
        yield


def _spec(model_id: str, dataset: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "search_space": {"name": "model_sparsity", "params": {"model_id": model_id, **fields.pop("space", {})}},
        "dataset": dataset or {"name": "digits"},
        "training": {"epochs": 1, "batch_size": 64, "lr": 1e-3},
        **fields,
    }


def test_the_space_builds_the_uploaded_model_with_its_trained_weights(trained: dict[str, Any], catalog: None) -> None:
    for key, dataset, params in (("cnn", "digits", {}), ("mlp", "synthetic", TABLE)):
        model_id, accuracy = trained[key]
        spec = JobSpec.model_validate(_spec(model_id, {"name": dataset, "params": params}))
        space = registry.search_spaces.create("model_sparsity", spec.search_space.params)
        data = load_data(spec, Path("."))
        model = space.build(space.sample(random.Random(0)), data.input_shape, data.num_classes)
        assert evaluate(model, data.x_test, data.y_test)[1] == pytest.approx(accuracy, abs=1e-3)
        built = sum(p.numel() for p in model.parameters())
        assert space.min_params(data.input_shape, data.num_classes) == built == space.max_params(data.input_shape, data.num_classes)
        # every build is a copy of its own: training one leaves the next untouched
        with torch.no_grad():
            next(model.parameters()).zero_()
        again = space.reference_model(data.input_shape, data.num_classes)
        assert evaluate(again, data.x_test, data.y_test)[1] == pytest.approx(accuracy, abs=1e-3)


def test_layers_are_grouped_in_order_and_each_group_takes_the_patterns_its_layers_can(
    trained: dict[str, Any], catalog: None
) -> None:
    assert [list(g) for g in groups(4, 16)] == [[0], [1], [2], [3]]
    assert [list(g) for g in groups(5, 2)] == [[0, 1], [2, 3, 4]]
    model_id, _ = trained["cnn"]
    space = registry.search_spaces.create("model_sparsity", {
        "model_id": model_id, "pattern_choices": ["dense", "unstructured", "channel", "2:4"], "max_groups": 2,
        "layer_sparsity_choices": [0.5, 0.9]})  # fmt: skip
    assert isinstance(space, ModelSparsity)
    names = [layer.name for layer in space.model.layers]
    assert len(names) == 4 and [w.name for w in space.weight_specs((1, 8, 8), 10)] == names
    dims = space.dimensions()
    # the first convolution has 1 input channel: no 2:4; the last group holds the classifier: no channel
    assert dims["pattern_group0"].choices == ("dense", "unstructured", "channel")
    assert dims["pattern_group1"].choices == ("dense", "unstructured", "2:4")
    arch = {"pattern_group0": "unstructured", "sparsity_group0": 0.9, "pattern_group1": "2:4"}
    assert space.layer_sparsity(arch) == {names[0]: 0.9, names[1]: 0.9, names[2]: 0.5, names[3]: 0.5}
    assert space.layer_patterns(arch) == {names[0]: "unstructured", names[1]: "unstructured", names[2]: "2:4",
                                          names[3]: "2:4"}  # fmt: skip
    for bad in ({**arch, "sparsity_group1": 0.5}, {**arch, "pattern_group1": "channel"}, {"pattern_group0": "dense"}):
        with pytest.raises(ValueError, match="arch"):
            space.layer_sparsity(bad)


def test_a_job_is_refused_at_the_field_for_an_unknown_model_and_for_data_the_model_does_not_take(
    trained: dict[str, Any], catalog: None
) -> None:
    with pytest.raises(ValidationError) as unknown:
        JobSpec.model_validate(_spec("0" * 32))
    (error,) = unknown.value.errors()
    assert error["loc"] == ("search_space", "params", "model_id") and "0" * 32 in error["msg"]

    model_id, _ = trained["cnn"]
    with pytest.raises(ValidationError) as mismatch:
        JobSpec.model_validate(_spec(model_id, {"name": "synthetic", "params": TABLE}))
    (error,) = mismatch.value.errors()
    assert error["loc"] == ("dataset", "name") and error["type"] == "dataset_incompatible"
    assert "[1, 8, 8]" in error["msg"] and "10 outputs" in error["msg"]
    assert "[24]" in error["msg"] and "4 classes" in error["msg"]

    with pytest.raises(ValidationError) as stuck:
        JobSpec.model_validate(_spec(model_id, space={"pattern_choices": ["2:4"]}))
    assert "no pattern for group(s) [0]" in stuck.value.errors()[0]["msg"]


def test_a_model_is_unknown_where_no_catalog_has_it(trained: dict[str, Any]) -> None:
    from nas.models.node_cache import NodeModelCatalog

    model_id, _ = trained["cnn"]
    with scoped_model_catalog(NodeModelCatalog(Path("/nonexistent"), {})), pytest.raises(ValidationError) as refused:
        JobSpec.model_validate(_spec(model_id))
    assert refused.value.errors()[0]["loc"] == ("search_space", "params", "model_id")


@pytest.mark.parametrize(
    ("sparsifier", "patterns"),
    [
        ({"name": "magnitude", "params": {"prune_at": 0.0}}, ["dense", "unstructured", "channel"]),
        ({"name": "gmp", "params": {"start": 0.0, "end": 0.5}}, ["dense", "unstructured"]),
        ({"name": "lottery", "params": {"rounds": 1}}, ["dense", "unstructured"]),
        ({"name": "nm", "params": {"n": 2, "m": 4}}, ["dense", "2:4"]),
    ],
    ids=["magnitude", "gmp", "lottery", "srste"],
)
def test_a_trial_fine_tunes_from_the_trained_weights(
    trained: dict[str, Any], catalog: None, sparsifier: dict[str, Any], patterns: list[str]
) -> None:
    """After one epoch at half sparsity the CNN is within a few points of its trained accuracy; from
    scratch it would be far below. The lottery ticket rewinds to the trained weights, not to a fresh draw;
    SR-STE keeps the first convolution, whose single input channel forms no N:M group, dense."""
    model_id, accuracy = trained["cnn"]
    spec = JobSpec.model_validate(_spec(model_id, space={"pattern_choices": patterns, "layer_sparsity_choices": [0.5]},
                                        sparsifier=sparsifier, training={"epochs": 2, "batch_size": 64, "lr": 5e-4}))  # fmt: skip
    space = registry.search_spaces.create("model_sparsity", spec.search_space.params)
    # the first convolution (one input channel: no groups of 4) dense, the others at half their weights
    sparse = "2:4" if "2:4" in patterns else "unstructured"
    arch = {"pattern_group0": "dense", **{f"pattern_group{g}": sparse for g in range(1, 4)},
            **({f"sparsity_group{g}": 0.5 for g in range(1, 4)} if sparse == "unstructured" else {})}  # fmt: skip
    epochs: list[dict[str, float]] = []
    outcome = run_trial(spec, arch, Path("."), lambda epoch, metrics: epochs.append(metrics))
    assert epochs[0]["val_accuracy"] > accuracy - 0.05, (epochs, accuracy)  # epochs report the validation split
    assert outcome.metrics["accuracy"] > accuracy - 0.03, (outcome.metrics, accuracy)
    densities = {layer["name"]: layer["density"] for layer in outcome.layers}
    for name, sparsity in space.layer_sparsity(arch).items():
        assert densities[name] == pytest.approx(1 - sparsity, abs=0.02)
    # the saved trial rebuilds from the stored model and its own weights and masks, as an export does
    data = load_data(spec, Path("."))
    rebuilt = load_trained_model(outcome.model_bytes)
    assert evaluate(rebuilt, data.x_test, data.y_test)[1] == pytest.approx(outcome.metrics["accuracy"])


def test_every_trial_is_shown_beside_the_dense_model() -> None:
    baseline = {"dense_accuracy": 0.98, "dense_latency_ms": 0.4}
    beside = beside_baseline(baseline, {"accuracy": 0.97, "latency_ms": 0.1})
    assert beside == pytest.approx({**baseline, "accuracy_drop": 0.01, "speedup": 4.0})
    assert beside_baseline(baseline, {"accuracy": 0.5}) == pytest.approx({**baseline, "accuracy_drop": 0.48})
    assert beside_baseline({}, {"accuracy": 0.97, "latency_ms": 0.1}) == {}


def test_the_latency_predictor_refuses_allocations_too_slow_for_the_target(tmp_path: Path) -> None:
    """Planned before any training: the dense allocation of a wide MLP predicts slower than a 95% sparse one,
    so a latency target between the two refuses the first and lets the second train."""
    from torch import nn

    from nas.models.node_cache import NodeModelCatalog
    from tests.pretrained import onnx_bytes
    from workers.feasibility import planned_metrics, violation

    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(24, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 4))
    catalog, (model_id,) = node_catalog(tmp_path, [onnx_bytes(wide, (24,))])
    assert isinstance(catalog, NodeModelCatalog)
    dense = {f"pattern_group{g}": "dense" for g in range(3)}
    sparse = {**{f"pattern_group{g}": "unstructured" for g in range(3)}, **{f"sparsity_group{g}": 0.95 for g in range(3)}}
    with scoped_model_catalog(catalog):
        job = _spec(model_id, {"name": "synthetic", "params": {"input_shape": [24], "num_classes": 4}},
                    space={"layer_sparsity_choices": [0.5, 0.95]})  # fmt: skip
        spec = JobSpec.model_validate(job)
        space = registry.search_spaces.create("model_sparsity", spec.search_space.params)
        random_search = registry.strategies.get("random")
        slow, fast = (planned_metrics(spec, space, random_search, arch)["predicted_latency_ms"] for arch in (dense, sparse))
        assert fast < slow
        spec = JobSpec.model_validate({**job, "constraints": {"max_latency_ms": (slow * fast) ** 0.5}})
        assert "exceeds constraints.max_latency_ms" in violation(spec, planned_metrics(spec, space, random_search, dense))
        assert violation(spec, planned_metrics(spec, space, random_search, sparse)) is None


def test_channel_pruned_layers_of_a_converted_model_shrink_into_smaller_dense_layers(
    trained: dict[str, Any], catalog: None
) -> None:
    """The converted network is an fx graph, not a Sequential: its layers are linked along the graph
    (through ReLU, max-pooling and the flatten), so whole channels gone make the next layer smaller."""
    from nas.sparse.shrink import find_links

    model_id, accuracy = trained["cnn"]
    spec = JobSpec.model_validate(_spec(
        model_id, space={"pattern_choices": ["dense", "channel"], "layer_sparsity_choices": [0.5]},
        sparsifier={"name": "magnitude", "params": {"prune_at": 0.0}}, training={"epochs": 2, "batch_size": 64, "lr": 2e-3},
    ))  # fmt: skip
    space = registry.search_spaces.create("model_sparsity", spec.search_space.params)
    reference = space.reference_model((1, 8, 8), 10)
    assert [(link.producer, link.consumer) for link in find_links(reference)] == [
        ("conv0", "conv1"), ("conv1", "fc0"), ("fc0", "out")
    ]
    arch = {"pattern_group0": "dense", "pattern_group1": "channel", "sparsity_group1": 0.5,
            "pattern_group2": "channel", "sparsity_group2": 0.5, "pattern_group3": "dense"}  # fmt: skip
    outcome = run_trial(spec, arch, Path("."), lambda epoch, metrics: None)
    kernels = {layer["name"]: layer["kernel"] for layer in outcome.layers}
    # conv1 and fc0 lose half their output channels, and fc0 and out the inputs that read them
    assert kernels == {"conv0.weight": "dense", "conv1.weight": "shrunk", "fc0.weight": "shrunk", "out.weight": "shrunk"}
    assert outcome.metrics["accuracy"] > accuracy - 0.05

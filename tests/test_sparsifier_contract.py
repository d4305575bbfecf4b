"""Every registered sparsifier, at its defaults, inside the workers' trainer on the digits.

The names are read from the registry when the tests are collected, so a sparsifier registered
later is covered without touching this file.
"""

from __future__ import annotations

from pathlib import Path
import pytest
import torch
from pydantic import ValidationError

from nas import registry
from nas.sparse.masks import masks, prunable_weights
from nas.specs import JobSpec
from nas.training import load_trained_model, run_trial
from tests.sparsity_targets import expected_sparsity

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ARCH = {"depth": 2, "width_0": 256, "width_1": 128, "activation": "relu"}  # wide enough to learn at 90% sparsity
SHAPES = {"fc0.weight": (256, 64), "fc1.weight": (128, 256), "out.weight": (10, 128)}


@pytest.mark.parametrize("name", registry.sparsifiers.names())
def test_every_sparsifier_trains_to_its_target_with_masks_that_hold(name: str, data_dir: Path) -> None:
    spec = JobSpec(
        search_space={"name": "sparse_mlp"},
        dataset={"name": "digits"},
        sparsifier={"name": name},
        training={"epochs": 3, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.01},
    )
    history: list[dict[str, float]] = []
    outcome = run_trial(spec, ARCH, data_dir, lambda epoch, metrics: history.append(metrics))

    assert len(history) == 3
    for metrics in history:
        assert {key for key in metrics if key.startswith("density:")} == {f"density:{w}" for w in SHAPES}
        assert all(0.0 < metrics[f"density:{w}"] <= 1.0 for w in SHAPES)
    final = history[-1]
    assert final["sparsity"] == outcome.metrics["sparsity"]
    assert outcome.metrics["accuracy"] > 0.7, "the sparse network did not learn"

    sparsifier = registry.sparsifiers.get(name)
    target = expected_sparsity(spec.sparsifier.params, sparsifier.pattern, SHAPES)
    if target is not None:
        assert outcome.metrics["sparsity"] == pytest.approx(target, abs=0.01)
    else:
        assert outcome.metrics["sparsity"] > 0.0

    # The trial's layers agree with the last epoch, and the saved masks hold zeros exactly.
    assert [layer["name"] for layer in outcome.layers] == list(SHAPES)
    for layer in outcome.layers:
        assert layer["density"] == final[f"density:{layer['name']}"]
        assert layer["shape"] == list(SHAPES[layer["name"]])
    model = load_trained_model(outcome.model_bytes)
    saved = masks(model)
    assert saved, "the trained model carries no masks"
    for weight_name, mask in saved.items():
        module, attr = prunable_weights(model)[weight_name]
        assert torch.all(getattr(module, attr)[mask == 0] == 0), weight_name
    masked_layers = [layer for layer in outcome.layers if layer["name"] in saved and layer["density"] < 1.0]
    assert all(layer["pattern"] != "dense" for layer in masked_layers)


@pytest.mark.parametrize("name", registry.sparsifiers.names())
def test_every_sparsifier_accepts_the_mlp_space_at_submission(name: str) -> None:
    spec = JobSpec(search_space={"name": "sparse_mlp"}, dataset={"name": "mnist"}, sparsifier={"name": name})
    assert spec.sparsifier.name == name


@pytest.mark.skipif("nm" not in registry.sparsifiers.names(), reason="no nm sparsifier registered")
def test_an_incompatible_sparsifier_is_refused_at_submission_naming_the_field() -> None:
    with pytest.raises(ValidationError) as refused:
        JobSpec(
            search_space={"name": "sparse_mlp", "params": {"width_choices": [64, 100]}},
            dataset={"name": "digits"},
            sparsifier={"name": "nm", "params": {"n": 2, "m": 8}},
        )
    errors = refused.value.errors()
    assert {error["loc"] for error in errors} == {("sparsifier", "params", "m")}
    assert {error["type"] for error in errors} == {"sparsifier_incompatible"}
    assert any("100" in error["msg"] and "fc1.weight" in error["msg"] for error in errors)

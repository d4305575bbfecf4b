from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from nas.data import validation_split
from nas.specs import JobSpec
from nas.training import evaluate, load_data, load_dataset, load_trained_model, run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LENET = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}
FINAL_METRICS = {
    "accuracy", "loss", "test_accuracy", "test_loss", "val_accuracy", "val_loss",
    "sparsity", "nonzero_params", "params", "flops", "nonzero_flops",
    "latency_ms", "latency_median_ms", "latency_iqr_ms", "masked_latency_ms", "train_time_s",
}  # fmt: skip


def spec(dataset: dict, **overrides: object) -> JobSpec:
    return JobSpec(**{"search_space": {"name": "sparse_mlp"}, "dataset": dataset, **overrides})


def test_lenet_on_digits_learns_and_hits_the_target_sparsity(data_dir: Path) -> None:
    job = spec({"name": "digits"}, training={"epochs": 3, "batch_size": 16, "lr": 3e-3})
    reports: list[tuple[int, dict[str, float]]] = []
    outcome = run_trial(job, LENET, data_dir, lambda epoch, metrics: reports.append((epoch, metrics)))

    assert [epoch for epoch, _ in reports] == [1, 2, 3]
    densities = {"density:fc0.weight", "density:fc1.weight", "density:out.weight"}
    for _, metrics in reports:
        assert metrics.keys() == {"train_loss", "val_loss", "val_accuracy", "sparsity", "epoch_time_s"} | densities
    assert reports[0][1]["sparsity"] == 0.0  # prune_at=0.5: dense for the first half
    assert reports[0][1]["density:fc0.weight"] == 1.0
    assert reports[-1][1]["density:fc1.weight"] == pytest.approx(0.1, abs=1e-4)
    assert reports[-1][1]["val_accuracy"] == outcome.metrics["val_accuracy"]

    metrics = outcome.metrics
    assert metrics.keys() == FINAL_METRICS
    assert metrics["accuracy"] > 0.85 and metrics["val_accuracy"] > 0.85
    assert (metrics["test_accuracy"], metrics["test_loss"]) == (metrics["accuracy"], metrics["loss"])
    assert outcome.outputs["split"] == {
        "train": 1212, "val": 135, "test": 450, "val_fraction": 0.1, "val_seed": 0, "stratified": True,
    }  # fmt: skip
    assert metrics["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert metrics["params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert metrics["nonzero_params"] < 0.11 * metrics["params"]
    assert metrics["nonzero_flops"] == pytest.approx(0.1 * metrics["flops"], rel=0.01)
    assert metrics["latency_ms"] > 0 and metrics["train_time_s"] > 0
    assert [(layer["name"], layer["shape"], layer["pattern"]) for layer in outcome.layers] == [
        ("fc0.weight", [300, 64], "unstructured"), ("fc1.weight", [100, 300], "unstructured"),
        ("out.weight", [10, 100], "unstructured"),
    ]  # fmt: skip
    assert all(layer["kernel"] in {"dense", "csr", "shrunk"} for layer in outcome.layers)

    # The serialised model alone rebuilds the trained, masked network.
    model = load_trained_model(outcome.model_bytes)
    data = load_dataset("digits", {}, data_dir)
    loss, accuracy = evaluate(model, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    assert accuracy == metrics["accuracy"] and loss == pytest.approx(metrics["loss"], rel=1e-6)


def test_the_validation_split_is_held_out_of_the_training_data_stratified_and_seeded(data_dir: Path) -> None:
    job = spec({"name": "digits"}, training={"val_fraction": 0.2, "val_seed": 3})
    data, stored = load_data(job, data_dir), load_dataset("digits", {}, data_dir)
    assert len(data.y_train) + len(data.y_val) == len(stored.y_train)
    assert len(data.y_val) == round(0.2 * len(stored.y_train))
    assert torch.equal(data.x_test, torch.from_numpy(stored.x_test))  # the test split is untouched
    rows = {row.tobytes() for row in stored.x_train}  # every validation example comes from the training split
    assert all(row.numpy().tobytes() in rows for row in data.x_val)
    assert not {row.numpy().tobytes() for row in data.x_val} & {row.numpy().tobytes() for row in data.x_train}
    shares = np.bincount(data.y_val.numpy()) / len(data.y_val)  # stratified: each class keeps its share
    assert np.abs(shares - np.bincount(stored.y_train) / len(stored.y_train)).max() < 0.01
    held = validation_split(stored.y_train, 0.2, 3)
    assert np.array_equal(held.val, validation_split(stored.y_train, 0.2, 3).val)  # seeded
    assert not np.array_equal(held.val, validation_split(stored.y_train, 0.2, 4).val)


def test_a_class_too_small_to_stratify_falls_back_to_an_unstratified_split() -> None:
    labels = np.array([0] * 20 + [1] * 20 + [2])  # class 2 has one example: it cannot be on both sides
    held = validation_split(labels, 0.25, 0)
    assert not held.stratified and len(held.val) == 10 and len(held.train) == 31
    assert sorted(np.concatenate([held.train, held.val]).tolist()) == list(range(41))
    assert validation_split(labels[:40], 0.25, 0).stratified
    assert len(validation_split(np.array([0, 1]), 0.01, 0).val) == 1  # at least one example each side
    with pytest.raises(ValueError, match="at least 2 training examples"):
        validation_split(np.array([0]), 0.1, 0)


def test_trials_are_reproducible_and_depend_on_seed_and_arch(data_dir: Path) -> None:
    job = spec({"name": "digits"}, training={"epochs": 1, "optimizer": "sgd", "lr": 0.05}, seed=3)

    def run(job: JobSpec, arch: dict) -> dict[str, torch.Tensor]:
        return safetensors.torch.load(run_trial(job, arch, data_dir, lambda epoch, metrics: None).model_bytes)

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    first = run(job, LENET)
    assert same(run(job, LENET), first)
    assert not same(run(job.model_copy(update={"seed": 4}), LENET), first)


def test_searched_layer_sparsities_override_the_sparsifier_target(data_dir: Path) -> None:
    job = spec(
        {"name": "digits"},
        search_space={"name": "sparse_mlp", "params": {"layer_sparsity_choices": [0.0, 0.5, 0.8]}},
        sparsifier={"name": "magnitude", "params": {"sparsity": 0.9, "prune_at": 0.0}},
        training={"epochs": 1, "optimizer": "adamw", "weight_decay": 0.01},
    )
    arch = {"depth": 1, "width_0": 64, "activation": "tanh", "sparsity_fc0": 0.5, "sparsity_out": 0.0}
    outcome = run_trial(job, arch, data_dir, lambda epoch, metrics: None)
    assert [(layer["density"], layer["pattern"]) for layer in outcome.layers] == [(0.5, "unstructured"), (1.0, "dense")]


def test_lenet_on_mnist_subset(data_dir: Path) -> None:
    job = spec(
        {"name": "mnist", "params": {"train_limit": 5000}},
        training={"epochs": 3, "batch_size": 64, "lr": 2e-3},
    )
    epochs: list[int] = []
    outcome = run_trial(job, LENET, data_dir, lambda epoch, metrics: epochs.append(epoch))
    assert epochs == [1, 2, 3]
    assert outcome.metrics["accuracy"] > 0.85
    assert outcome.metrics["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert outcome.metrics["flops"] == 2 * (784 * 300 + 300 * 100 + 100 * 10)

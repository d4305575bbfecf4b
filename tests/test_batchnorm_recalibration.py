"""BatchNorm statistics are re-estimated in the one trial ending (``nas.training.end_trial``).

Pruning moves every activation under the running averages training left, so a pruned network
evaluated with them loses accuracy it still has; the trial ending recalibrates them on
``CALIBRATION_BATCHES`` training batches, no weight updated, for every sparsifier, and the last
reported epoch is that recalibrated model's evaluation.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas import registry
from nas.sparse.masks import prunable_weights, set_mask
from nas.specs import JobSpec
from nas.training import (
    CALIBRATION_BATCHES,
    end_trial,
    evaluate,
    load_data,
    load_trained_model,
    recalibrate_batchnorm,
    run_trial,
    trial_seed,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# A Conv-2 with a BatchNorm after each convolution, one hidden fully connected layer, on 8x8 digits.
CNN = {
    "name": "sparse_cnn",
    "params": {"families": ["conv"], "conv_batchnorm": True, "conv_max_blocks": 1, "conv_width_choices": [16],
               "fc_min_depth": 1, "fc_max_depth": 1, "fc_width_choices": [64]},
}  # fmt: skip


IMAGES = {"name": "synthetic", "params": {"input_shape": [4, 8, 8], "num_classes": 4, "train_size": 640, "test_size": 128}}


def job(**fields: object) -> JobSpec:
    return JobSpec(**{"dataset": {"name": "digits"}, "search_space": CNN,
                      "training": {"epochs": 2, "batch_size": 64, "lr": 3e-3}, **fields})  # fmt: skip


def cnn_arch(spec: JobSpec) -> dict:
    return registry.search_spaces.create(spec.search_space.name, spec.search_space.params).sample(random.Random(0))


def batchnorm_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def weights_and_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    stats = batchnorm_stats(model)
    return {k: v.clone() for k, v in model.state_dict().items() if k not in stats and "num_batches" not in k}


def test_the_trial_ending_restores_a_pruned_pretrained_network(data_dir: Path) -> None:
    spec = job()
    arch = cnn_arch(spec)
    data = load_data(spec, data_dir)
    torch.manual_seed(0)
    model = registry.search_spaces.create(CNN["name"], CNN["params"]).build(arch, data.input_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(8):  # pretrained dense, as a user's network arrives
        model.train()
        for batch in torch.randperm(len(data.x_train), generator=order).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
            optimizer.step()
    _, dense_accuracy = evaluate(model, data.x_test, data.y_test)
    # 70% of the second convolution's weights go at random, no fine-tuning: its outputs' variance
    # drops to about 30% while the running statistics stay the dense ones.
    module, attr = prunable_weights(model)["conv1.weight"]
    set_mask(module, attr, torch.rand(module.weight.shape, generator=torch.Generator().manual_seed(0)) >= 0.7)
    _, stale_accuracy = evaluate(model, data.x_test, data.y_test)
    before = weights_and_masks(model)
    stale_stats = batchnorm_stats(model)

    outcome = end_trial(model, spec, data, arch, 0.0)

    accuracy = outcome.metrics["accuracy"]
    assert dense_accuracy > 0.95 and stale_accuracy < dense_accuracy - 0.3, (dense_accuracy, stale_accuracy)
    assert accuracy > dense_accuracy - 0.08, (dense_accuracy, stale_accuracy, accuracy)  # restored
    after = weights_and_masks(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)  # no weight moved
    assert any(not torch.equal(v, stale_stats[k]) for k, v in batchnorm_stats(model).items())
    # The saved model is the recalibrated one: it evaluates to the reported accuracy.
    saved = load_trained_model(outcome.model_bytes)
    assert evaluate(saved, data.x_test, data.y_test)[1] == outcome.metrics["accuracy"]


@pytest.mark.parametrize("name", registry.sparsifiers.names())
def test_every_sparsifier_s_trial_ends_recalibrated(name: str, data_dir: Path) -> None:
    # Four input channels, so N:M groups (along the input channels) fit the first convolution too.
    spec = job(sparsifier={"name": name}, dataset=IMAGES)
    arch = cnn_arch(spec)
    reports: list[tuple[int, dict[str, float]]] = []
    outcome = run_trial(spec, arch, data_dir, lambda epoch, metrics: reports.append((epoch, metrics)))

    # The saved statistics are those the trial ending's recalibration gives under the final masks.
    saved = load_trained_model(outcome.model_bytes)
    again = load_trained_model(outcome.model_bytes)
    data = load_data(spec, data_dir)
    recalibrate_batchnorm(again, data.x_train, spec.training.batch_size, CALIBRATION_BATCHES, trial_seed(spec, arch))
    stats, expected = batchnorm_stats(saved), batchnorm_stats(again)
    assert stats and all(torch.equal(stats[k], expected[k]) for k in stats)
    # The last epoch reported is that model's evaluation on the validation split, as the final metrics are.
    assert [epoch for epoch, _ in reports] == [1, 2]
    last = reports[-1][1]
    assert last["val_accuracy"] == outcome.metrics["val_accuracy"] and last["val_loss"] == outcome.metrics["val_loss"]
    assert last["sparsity"] == outcome.metrics["sparsity"] and "train_loss" in last

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.latency import measure
from nas.sparse.magnitude import MagnitudePruning


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def test_measure_reports_a_median_and_restores_threads_and_mode() -> None:
    model = mlp().train()
    threads = torch.get_num_threads()
    result = measure(model, (1, 8, 8), batch_size=4, num_threads=1, min_run_time=0.05)
    assert result.keys() == {"median_ms", "iqr_ms", "runs", "num_threads", "batch_size"}
    assert result["median_ms"] > 0 and result["iqr_ms"] >= 0
    assert result["runs"] >= 10 and result["batch_size"] == 4 and result["num_threads"] == 1
    assert torch.get_num_threads() == threads and model.training


def test_measure_times_masked_models() -> None:
    model = mlp()
    sparsifier = MagnitudePruning(MagnitudePruning.Params(prune_at=0.0))
    sparsifier.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=1, layer_sparsity=None)
    assert measure(model, (1, 8, 8), min_run_time=0.05)["median_ms"] > 0


def test_measure_rejects_unknown_targets() -> None:
    with pytest.raises(ValueError, match="unknown latency target 'tpu'; valid: cpu"):
        measure(mlp(), (1, 8, 8), target="tpu")

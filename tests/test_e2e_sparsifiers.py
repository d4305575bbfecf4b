"""Every registered sparsifier through the service: a job on digits completes, at the spec's sparsity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nas import registry
from nas.client import Client
from nas.specs import JobStatus, TrialState
from benchmarks.server_process import ServerProcess
from tests.sparsity_targets import expected_sparsity

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[ServerProcess, str]]:
    server = ServerProcess(tmp_path_factory.mktemp("home"), {"NAS_DATA_DIR": str(data_dir)})
    key = server.create_key("sparse-user")
    server.start()
    yield server, key
    server.stop()


def test_each_sparsifier_completes_a_job_at_its_sparsity(served: tuple[ServerProcess, str]) -> None:
    server, key = served
    with Client(server.url, key) as client:
        jobs = {
            name: client.submit(
                {
                    "name": f"sparsifier-{name}",
                    "search_space": {"name": "sparse_mlp", "params": {"min_depth": 2, "max_depth": 2,
                                                                      "width_choices": [256]}},
                    "dataset": {"name": "digits"},
                    "sparsifier": {"name": name},
                    "training": {"epochs": 3, "batch_size": 32, "optimizer": "adamw", "lr": 0.003,
                                 "weight_decay": 0.01},
                    "budget": {"max_trials": 1},
                }
            )
            for name in registry.sparsifiers.names()
        }
        for name, job in jobs.items():
            done = client.wait(job.id, progress=False, poll_s=0.5, timeout=600)
            assert done.status is JobStatus.succeeded, (name, done.error)
            (trial,) = client.trials(job.id)
            trial = client.trial(trial.id)
            assert trial.state is TrialState.complete
            shapes = {layer.name: layer.shape for layer in trial.layers}
            target = expected_sparsity(done.spec["sparsifier"]["params"], registry.sparsifiers.get(name).pattern,
                                       shapes)
            if target is None:
                assert trial.metrics["sparsity"] > 0, name
            else:
                assert trial.metrics["sparsity"] == pytest.approx(target, abs=0.01), name
            assert all(f"density:{w}" in trial.history[-1].metrics for w in shapes), name

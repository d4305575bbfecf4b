"""End to end: the real `nas serve` (uvicorn, dispatcher, local Ray), the CLI and the SDK.

These are the backbone's acceptance checks: jobs on digits and MNIST succeed with plausible
accuracy and the requested sparsity, on SQLite and PostgreSQL; a running job can be cancelled;
a server killed with SIGKILL mid-job finishes the job after a restart, losing and repeating no
trial.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from safetensors.numpy import load_file

from nas.client import Client, ConflictError
from nas.specs import JobStatus, TrialState
from benchmarks.server_process import ServerProcess

pytestmark = pytest.mark.ray

SPARSITY = 0.8


def digits_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "digits-e2e",
        "search_space": {"name": "sparse_mlp", "params": {"max_depth": 2, "width_choices": [128, 256, 300]}},
        "strategy": {"name": "random"},
        "dataset": {"name": "digits"},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": SPARSITY}},
        "training": {"epochs": 6, "batch_size": 32, "lr": 0.003},
        "budget": {"max_trials": 4, "max_concurrent": 2},
        "seed": 1,
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def server_factory(tmp_path: Path, data_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        home = tmp_path / f"home{len(servers)}"
        home.mkdir()
        server = ServerProcess(home, {"NAS_DATA_DIR": str(data_dir), **env})
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit_with_cli(server: ServerProcess, key: str, spec: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = server.cli("submit", str(path), "--wait", api_key=key)
    assert result.returncode == 0, f"nas submit failed: {result.stderr}\n{server.log()[-3000:]}"
    return result.stdout.strip().splitlines()[-1]


def check_complete_job(client: Client, job_id: str, n_trials: int, min_accuracy: float) -> None:
    job = client.job(job_id)
    assert job.status is JobStatus.succeeded, job.error
    trials = list(client.trials(job_id))
    assert [t.number for t in trials] == list(range(n_trials))
    assert all(t.state is TrialState.complete for t in trials)
    for summary in trials:
        trial = client.trial(summary.id)
        m = trial.metrics
        assert m["accuracy"] > min_accuracy, (trial.arch, m)
        assert abs(m["sparsity"] - SPARSITY) <= 0.01, m
        assert 0 < m["nonzero_params"] < m["params"]
        assert m["flops"] > 0 and m["latency_ms"] > 0 and m["train_time_s"] > 0
        epochs = job.spec["training"]["epochs"]
        assert [h.epoch for h in trial.history] == list(range(1, epochs + 1))
        assert trial.layers and all(0 < layer.density <= 1 for layer in trial.layers)
        assert trial.has_model and trial.node_id
    assert job.best_trial_id in {t.id for t in trials}


def test_the_demo_search_of_the_quick_start_finishes(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    server.start("--demo")
    match = re.search(r"NAS_API_KEY=(\S+) nas trials (\w+)", server.log())
    assert match, server.log()[-3000:]
    key, job_id = match.groups()
    with Client(server.url, key) as client:
        job = client.wait(job_id, progress=False, poll_s=1, timeout=600)
        assert job.status is JobStatus.succeeded, job.error
        assert job.n_complete == job.spec["budget"]["max_trials"]


def test_digits_job_on_sqlite_via_cli(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = server_factory()
    key = server.create_key("alice")
    server.start()
    job_id = submit_with_cli(server, key, digits_spec(), tmp_path)

    with Client(server.url, key) as client:
        check_complete_job(client, job_id, n_trials=4, min_accuracy=0.85)
        best = client.job(job_id).best_trial_id
        model = client.download_model(best, tmp_path / "best.safetensors")
        tensors = load_file(model)
        masks = [name for name in tensors if name.endswith("mask")]
        assert masks, sorted(tensors)
        with pytest.raises(ConflictError):
            client.cancel(job_id)

    listing = server.cli("trials", job_id, api_key=key)
    assert listing.returncode == 0 and "complete" in listing.stdout

    # the dispatcher reported its local Ray's nodes: a job whose trials none could start is refused
    refused = httpx.post(f"{server.url}/api/v1/jobs", json=digits_spec(resources={"gpus": 16}),
                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert refused.status_code == 422, refused.text
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "resources", "gpus"] and error["msg"].startswith("no node of the cluster has")
    assert "stands in" not in error["msg"], error["msg"]


def test_mnist_job_and_cancel_on_postgresql(
    server_factory: Callable[..., ServerProcess], pg_database_url: str, tmp_path: Path
) -> None:
    server = server_factory(NAS_DATABASE_URL=pg_database_url)
    key = server.create_key("bob")
    server.start()
    mnist = digits_spec(
        name="mnist-e2e",
        dataset={"name": "mnist", "params": {"train_limit": 10000, "test_limit": 2000}},
        training={"epochs": 3, "batch_size": 64, "lr": 0.002},
    )
    job_id = submit_with_cli(server, key, mnist, tmp_path)

    with Client(server.url, key) as client:
        check_complete_job(client, job_id, n_trials=4, min_accuracy=0.85)

        long_job = client.submit(digits_spec(name="to-cancel", training={"epochs": 200}, budget={"max_trials": 50}))
        wait_for(lambda: any(t.state is TrialState.running for t in client.trials(long_job.id)), 120, "a running trial")
        client.cancel(long_job.id)
        wait_for(lambda: client.job(long_job.id).status.finished, 60, "the cancelled job to stop")
        job = client.job(long_job.id)
        assert job.status is JobStatus.cancelled and job.error
        states = {t.state for t in client.trials(long_job.id)}
        assert states <= {TrialState.cancelled, TrialState.complete}, states


def test_sigkill_mid_job_then_restart_loses_and_repeats_nothing(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    key = server.create_key("carol")
    server.start()
    n_trials = 6
    with Client(server.url, key) as client:
        job = client.submit(digits_spec(name="crash", training={"epochs": 25, "batch_size": 32, "lr": 0.003},
                                        budget={"max_trials": n_trials, "max_concurrent": 2}))

        def mid_job() -> bool:
            states = [t.state for t in client.trials(job.id)]
            return TrialState.complete in states and TrialState.running in states

        wait_for(mid_job, 240, "one complete and one running trial")
        running_at_kill = {t.id for t in client.trials(job.id) if t.state is TrialState.running}
        server.kill()

    server.start()
    with Client(server.url, key) as client:
        assert client.job(job.id).status is JobStatus.running
        final = client.wait(job.id, progress=False, poll_s=1, timeout=600)
        assert final.status is JobStatus.succeeded, final.error
        trials = list(client.trials(job.id))
        assert [t.number for t in trials] == list(range(n_trials))
        assert len({t.id for t in trials}) == n_trials
        assert all(t.state is TrialState.complete for t in trials)
        rerun = [t for t in trials if t.id in running_at_kill]
        assert rerun and all(t.attempts == 2 for t in rerun)

"""A job's budget raised over the API while it runs, and after it ended, on a real local Ray: the
runner takes up the new budget, and a finished job is resumed with its trials."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient
from ray import tune

from api.app import create_app
from nas.settings import Settings
from nas.specs import JobSpec, JobStatus, TrialState
from nas.store import Store, make_engine, upgrade
from workers.runner import JobRunner
from workers.trainable import EPOCH_METRICS, FINAL

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "data").mkdir()
    return Settings(home=tmp_path / "home", data_dir=tmp_path / "data")


@pytest.fixture
def store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


@pytest.fixture
def client(store: Store, settings: Settings) -> Iterator[TestClient]:
    key = store.create_api_key("tester")
    with TestClient(create_app(store, settings), headers={"Authorization": f"Bearer {key}"}) as test_client:
        yield test_client


def waits_for_go(config: dict[str, Any]) -> None:
    """A trial that completes once the test creates ``data_dir/go``."""
    go = Path(config["data_dir"]) / "go"
    while not go.exists():
        time.sleep(0.05)
    accuracy = 0.5 + 0.01 * config["number"]
    metrics = {"accuracy": accuracy, "val_accuracy": accuracy, "loss": 1.0, "sparsity": 0.9}
    tune.report({"epoch": 1, EPOCH_METRICS: metrics, **metrics})
    tune.report({**metrics, FINAL: {"metrics": metrics, "layers": [], "node_id": "n"}, "model": b"weights"})


def _job(store: Store, **budget: Any) -> str:
    spec = JobSpec.model_validate({"search_space": {"name": "sparse_mlp"}, "dataset": {"name": "digits"},
                                   "budget": {"max_concurrent": 2, **budget}})  # fmt: skip
    job = store.create_job(spec, "tester")
    assert store.claim_job("runner", 60) == job.id
    return job.id


def _wait_for(condition: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _start(store: Store, settings: Settings, job_id: str, runner_id: str = "runner") -> threading.Thread:
    runner = JobRunner(store, settings, job_id, runner_id, lease_s=8, trainable=waits_for_go)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


def test_a_running_job_takes_up_a_raised_budget(store: Store, settings: Settings, client: TestClient) -> None:
    job_id = _job(store, max_trials=2)
    thread = _start(store, settings, job_id)
    _wait_for(lambda: len(store.list_trials(job_id)[0]) == 2, "the whole budget handed out")  # both wait for go
    response = client.patch(f"/api/v1/jobs/{job_id}", json={"budget": {"max_trials": 4}})
    assert response.status_code == 200 and response.json()["status"] == "running", response.text
    (settings.data_dir / "go").touch()
    thread.join(300)
    assert not thread.is_alive()

    job = store.get_job(job_id)
    assert job.status is JobStatus.succeeded, job.error
    trials, _ = store.list_trials(job_id)
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.complete) for n in range(4)]


def test_a_job_out_of_time_given_more_time_resumes(store: Store, settings: Settings, client: TestClient) -> None:
    (settings.data_dir / "go").touch()
    job_id = _job(store, max_trials=2, timeout_s=0.001)  # spent before its runner asks for a trial
    _start(store, settings, job_id).join(300)
    ended = store.get_job(job_id)
    assert ended.status is JobStatus.failed and ended.n_trials == 0, ended

    response = client.patch(f"/api/v1/jobs/{job_id}", json={"budget": {"timeout_s": 3600}})
    assert response.status_code == 200 and response.json()["status"] == "queued", response.text
    assert store.claim_job("runner-2", 60) == job_id  # its time limit counts from this restart
    _start(store, settings, job_id, "runner-2").join(300)
    job = store.get_job(job_id)
    assert job.status is JobStatus.succeeded and job.n_complete == 2, job


def test_a_finished_job_raised_resumes_with_its_trials(store: Store, settings: Settings, client: TestClient) -> None:
    (settings.data_dir / "go").touch()
    job_id = _job(store, max_trials=2)
    _start(store, settings, job_id).join(300)
    first, _ = store.list_trials(job_id)
    assert store.get_job(job_id).status is JobStatus.succeeded and len(first) == 2

    response = client.patch(f"/api/v1/jobs/{job_id}", json={"budget": {"max_trials": 3}})
    assert response.status_code == 200 and response.json()["status"] == "queued", response.text
    assert store.claim_job("runner-2", 60) == job_id
    _start(store, settings, job_id, "runner-2").join(300)

    job = store.get_job(job_id)
    assert job.status is JobStatus.succeeded and job.finished_at is not None
    trials, _ = store.list_trials(job_id)
    assert [t.id for t in trials[:2]] == [t.id for t in first]  # the earlier trials, untouched
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.complete) for n in range(3)]
    assert job.best_trial_id == trials[2].id  # the strategy and the best trial see every trial

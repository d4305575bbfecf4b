"""The job runner on a real local Ray, with trainables that misbehave on purpose.

The trainables stand in for the trainer so that each failure mode is certain: a trial that
raises, one that ends without its final report, one that succeeds only on its second attempt.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune

from nas.settings import Settings
from nas.specs import JobSpec, JobStatus, TrialState
from nas.store import Store, make_engine, upgrade
from workers.runner import JobRunner
from workers.trainable import EPOCH_METRICS, FINAL

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    # Ray's workers cannot import test modules; ship these trainables by value instead.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", data_dir=tmp_path / "data")


@pytest.fixture
def store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


def run_job(store: Store, settings: Settings, trainable: Callable[[dict[str, Any]], None], **budget: Any) -> str:
    spec = JobSpec.model_validate(
        {"search_space": {"name": "sparse_mlp"}, "dataset": {"name": "digits"},
         "budget": {"max_trials": 3, "max_concurrent": 2, **budget}}
    )
    job = store.create_job(spec, "tester")
    assert store.claim_job("test-runner", 60) == job.id
    JobRunner(store, settings, job.id, "test-runner", trainable=trainable).run()
    return job.id


def succeeds(config: dict[str, Any]) -> None:
    metrics = {"accuracy": 0.5, "loss": 1.0, "sparsity": 0.9}
    tune.report({"epoch": 1, EPOCH_METRICS: metrics, **metrics})
    tune.report({**metrics, FINAL: {"metrics": metrics, "layers": [], "node_id": "n"}, "model": b"weights"})


def raises(config: dict[str, Any]) -> None:
    raise RuntimeError(f"broken trial {config['number']}")


def ends_silently(config: dict[str, Any]) -> None:
    metrics = {"accuracy": 0.5}
    tune.report({"epoch": 1, EPOCH_METRICS: metrics, **metrics})


def fails_first_attempt(config: dict[str, Any]) -> None:
    marker = Path(config["data_dir"]) / f"attempted-{config['number']}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(1)  # the worker process dies, as on an OOM kill
    succeeds(config)


def hangs_first_attempt(config: dict[str, Any]) -> None:
    marker = Path(config["data_dir"]) / f"hung-{config['number']}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        time.sleep(3600)  # a deadlocked trial: alive, silent
    succeeds(config)


def test_a_job_of_good_trials_succeeds_with_every_trial_persisted(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, succeeds)
    job = store.get_job(job_id)
    assert job.status is JobStatus.succeeded and job.best_trial_id
    trials, _ = store.list_trials(job_id)
    assert [t.number for t in trials] == [0, 1, 2]
    for trial in trials:
        full = store.get_trial(trial.id)
        assert full.state is TrialState.complete and full.has_model and full.node_id == "n"
        assert [h.epoch for h in full.history] == [1]
        assert store.get_artifact(trial.id, "model", "safetensors").size_bytes == len(b"weights")


def test_a_job_whose_trials_all_fail_ends_failed_with_their_errors(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, raises, max_retries=0)
    job = store.get_job(job_id)
    assert job.status is JobStatus.failed
    assert "no trial completed" in job.error and "broken trial" in job.error
    trials, _ = store.list_trials(job_id)
    assert len(trials) == 3 and all(t.state is TrialState.failed and "broken trial" in t.error for t in trials)


def test_a_trial_that_ends_without_its_final_report_fails_and_the_job_ends(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, ends_silently)
    assert store.get_job(job_id).status is JobStatus.failed
    trials, _ = store.list_trials(job_id)
    assert {t.state for t in trials} == {TrialState.failed}
    assert all("final report" in t.error for t in trials)


def test_a_trial_whose_worker_dies_is_retried_once_and_the_job_succeeds(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, fails_first_attempt, max_retries=1)
    assert store.get_job(job_id).status is JobStatus.succeeded
    trials, _ = store.list_trials(job_id)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state is TrialState.complete and t.attempts == 2 for t in trials)


def test_a_trial_that_stalls_is_stopped_and_retried(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, hangs_first_attempt, max_trials=2, max_retries=1, trial_stall_s=3)
    assert store.get_job(job_id).status is JobStatus.succeeded
    trials, _ = store.list_trials(job_id)
    assert all(t.state is TrialState.complete and t.attempts == 2 for t in trials)


def test_a_trial_that_stalls_past_its_retries_fails_with_the_reason(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, hangs_first_attempt, max_trials=1, max_retries=0, trial_stall_s=3)
    assert store.get_job(job_id).status is JobStatus.failed
    (trial,) = store.list_trials(job_id)[0]
    assert trial.state is TrialState.failed and "trial_stall_s" in trial.error
    assert trial.heartbeat_at is not None

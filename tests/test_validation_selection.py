"""Validation, then test: a job's best trial and Pareto front are chosen on validation metrics, and the
test metrics are recorded beside them, never ranked on.

Trials are crafted so that the validation and test splits disagree about which is best: through
the real store and the API's Pareto front, and through the real job runner on a real local Ray,
whose trainable reports the crafted numbers in place of training (every trainer's own metrics are
checked by tests/test_trial_lifecycle.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from nas.client.progress import best_text
from nas.pareto import best_trial, pareto_front
from nas.settings import Settings
from nas.specs import JobSpec, JobStatus, TrialState
from nas.store import Store, make_engine, upgrade

OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]

# By trial number. On validation, 1 is best and dominates 0, and 2 is faster: the front is {1, 2}.
# On the test split 2 would dominate both: a search ranking on test would report 2 alone, at 0.99.
CRAFTED = [
    {"val_accuracy": 0.80, "val_loss": 0.6, "test_accuracy": 0.95, "test_loss": 0.2, "latency_ms": 1.0},
    {"val_accuracy": 0.95, "val_loss": 0.2, "test_accuracy": 0.80, "test_loss": 0.6, "latency_ms": 1.0},
    {"val_accuracy": 0.70, "val_loss": 0.9, "test_accuracy": 0.99, "test_loss": 0.1, "latency_ms": 0.5},
]


def final_metrics(number: int) -> dict[str, float]:
    """What a trial ending records: accuracy and loss are the test values (nas.training.end_trial)."""
    crafted = CRAFTED[number]
    return {**crafted, "accuracy": crafted["test_accuracy"], "loss": crafted["test_loss"], "sparsity": 0.5}


def job_spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({
        "search_space": {"name": "sparse_mlp"}, "dataset": {"name": "digits"}, "objectives": OBJECTIVES,
        "budget": {"max_trials": len(CRAFTED), "max_concurrent": 1}, **fields,
    })  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", data_dir=tmp_path / "data")


@pytest.fixture
def store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


def pareto_numbers(store: Store, settings: Settings, job_id: str) -> set[int]:
    headers = {"Authorization": f"Bearer {store.create_api_key('tester')}"}
    with TestClient(create_app(store, settings)) as client:
        answer = client.get(f"/api/v1/jobs/{job_id}/pareto", headers=headers)
    assert answer.status_code == 200, answer.text
    return {t["number"] for t in answer.json()["items"]}


def test_the_front_and_the_best_trial_rank_on_validation_with_test_beside(store: Store, settings: Settings) -> None:
    spec = job_spec()
    job = store.create_job(spec, "tester")
    for number in range(len(CRAFTED)):
        trial = store.create_trial(job.id, {"depth": 1, "width_0": 16 * (number + 1)})
        store.start_trial(trial.id)
        store.finish_trial(trial.id, TrialState.complete, metrics=final_metrics(number))
    trials, _ = store.list_trials(job.id)

    assert {t.number for t in pareto_front(trials, spec.objectives)} == {1, 2}
    assert pareto_numbers(store, settings, job.id) == {1, 2}
    best = best_trial(trials, spec.objectives)
    assert best is not None and best.number == 1
    assert best.metrics["test_accuracy"] == best.metrics["accuracy"] == 0.80  # recorded beside, not ranked on
    # the SDK's and CLI's progress line: the value the best trial was chosen on, its test value beside
    assert best_text(store.get_job(job.id), best) == "best val_accuracy 0.95 (accuracy 0.8)"


def test_trials_recorded_before_validation_splits_rank_on_their_accuracy(store: Store, settings: Settings) -> None:
    spec = job_spec()
    job = store.create_job(spec, "tester")
    for number, accuracy in enumerate((0.9, 0.8)):
        trial = store.create_trial(job.id, {"depth": 1, "width_0": 16 * (number + 1)})
        store.start_trial(trial.id)
        store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": accuracy, "latency_ms": 1.0})
    trials, _ = store.list_trials(job.id)
    assert pareto_numbers(store, settings, job.id) == {0}
    assert best_trial(trials, spec.objectives).number == 0  # type: ignore[union-attr]


def reports_crafted_metrics(config: dict[str, Any]) -> None:
    """A trainable that reports CRAFTED[number]: one epoch on validation, then the trial's end."""
    from ray import tune

    from workers.trainable import EPOCH_METRICS, FINAL

    final = final_metrics(config["number"])
    epoch = {k: final[k] for k in ("val_accuracy", "val_loss", "sparsity")}
    tune.report({"epoch": 1, EPOCH_METRICS: epoch, **epoch})
    tune.report({**final, FINAL: {"metrics": final, "layers": [], "node_id": "n"}, "model": b"weights"})


@pytest.fixture
def local_ray() -> Iterator[None]:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_the_runner_sets_the_best_trial_by_validation(store: Store, settings: Settings, local_ray: None) -> None:
    from workers.runner import JobRunner

    job = store.create_job(job_spec(), "tester")
    assert store.claim_job("test-runner", 60) == job.id
    JobRunner(store, settings, job.id, "test-runner", trainable=reports_crafted_metrics).run()

    done = store.get_job(job.id)
    assert done.status is JobStatus.succeeded, done.error
    trials, _ = store.list_trials(job.id)
    assert [t.state for t in trials] == [TrialState.complete] * len(CRAFTED)
    by_id = {t.id: t for t in trials}
    assert by_id[done.best_trial_id].number == 1  # type: ignore[index]  # on test it would be trial 2
    assert pareto_numbers(store, settings, job.id) == {1, 2}
    for trial in trials:
        assert trial.metrics["test_accuracy"] == trial.metrics["accuracy"] == CRAFTED[trial.number]["test_accuracy"]
        assert trial.metrics["val_accuracy"] == CRAFTED[trial.number]["val_accuracy"]

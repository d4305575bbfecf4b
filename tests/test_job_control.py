"""Job control over the REST API on real SQLite and PostgreSQL stores: raising a job's budget,
deleting a job with its files, and who a key signs in as."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from nas.settings import Settings
from nas.specs import JobStatus, LayerInfo, TrialState
from nas.store import Artifact, Store
from nas.store.artifacts import job_folder, save_model, tune_folder
from nas.store.tables import ArtifactRow, TrialEpochRow, TrialLayerRow, TrialRow
from tests.test_api import API, auth, keys, submit  # noqa: F401  (keys is a fixture)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    return Settings(home=tmp_path / "home", data_dir=data, limit_trials_per_job=20, limit_active_jobs=2)


@pytest.fixture
def client(store: Store, settings: Settings) -> TestClient:
    with TestClient(create_app(store, settings)) as test_client:
        yield test_client


def _patch(client: TestClient, key: str, job_id: str, budget: dict[str, Any]) -> Any:
    return client.patch(f"{API}/jobs/{job_id}", json={"budget": budget}, headers=auth(key))


def _field_error(response: Any) -> tuple[list[str], str]:
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return error["loc"], error["msg"]


def test_whoami_names_the_keys_owner(client: TestClient, keys: dict[str, str]) -> None:
    alice = client.get(f"{API}/whoami", headers=auth(keys["alice"]))
    assert alice.status_code == 200
    assert alice.json()["owner"] == "alice" and alice.json()["is_admin"] is False
    admin = client.get(f"{API}/whoami", headers=auth(keys["admin"])).json()
    assert admin["owner"] == "root" and admin["is_admin"] is True
    assert client.get(f"{API}/whoami").status_code == 401


def test_a_running_jobs_budget_is_raised(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    job = submit(client, keys["alice"], budget={"max_trials": 4, "timeout_s": 600})
    assert store.claim_job("runner", lease_s=60) == job["id"]

    raised = _patch(client, keys["alice"], job["id"], {"max_trials": 6, "timeout_s": 900})
    assert raised.status_code == 200, raised.text
    assert raised.json()["status"] == "running"
    assert raised.json()["spec"]["budget"] == {**job["spec"]["budget"], "max_trials": 6, "timeout_s": 900}
    assert store.job_budget(job["id"])["max_trials"] == 6  # what the runner re-reads

    loc, msg = _field_error(_patch(client, keys["alice"], job["id"], {"max_trials": 5}))
    assert loc == ["body", "budget", "max_trials"] and "can only be raised: it is 6, not 5" in msg
    again = _patch(client, keys["alice"], job["id"], {"max_trials": 6})  # a repeated change: nothing to do
    assert again.status_code == 200 and again.json()["spec"]["budget"]["max_trials"] == 6
    loc, msg = _field_error(_patch(client, keys["alice"], job["id"], {"max_trials": 21}))
    assert loc == ["body", "budget", "max_trials"] and "at most 20 trials per job" in msg
    loc, _ = _field_error(_patch(client, keys["alice"], job["id"], {"max_concurrent": 8}))
    assert loc == ["body", "budget", "max_concurrent"]
    loc, msg = _field_error(_patch(client, keys["alice"], job["id"], {}))
    assert loc == ["body", "budget"] and "max_trials or timeout_s" in msg
    assert _patch(client, keys["bob"], job["id"], {"max_trials": 8}).status_code == 404
    assert store.job_budget(job["id"])["max_trials"] == 6

    untimed = submit(client, keys["alice"])
    loc, msg = _field_error(_patch(client, keys["alice"], untimed["id"], {"timeout_s": 60}))
    assert loc == ["body", "budget", "timeout_s"] and "no time limit" in msg


def test_a_refused_raise_names_the_budget_and_leaves_the_note(
    store: Store, settings: Settings, keys: dict[str, str]
) -> None:
    # 6 trials x 2 epochs passes 10 trial-epochs; the change named max_trials, not training.epochs
    with TestClient(create_app(store, dataclasses.replace(settings, limit_trial_epochs=10))) as client:
        job = submit(client, keys["alice"], budget={"max_trials": 4}, training={"epochs": 2})
        store.claim_job("runner", lease_s=60)
        refused = client.patch(
            f"{API}/jobs/{job['id']}", json={"budget": {"max_trials": 6}, "note": "longer run"}, headers=auth(keys["alice"])
        )
        loc, msg = _field_error(refused)
        assert loc == ["body", "budget", "max_trials"] and "12 trial-epochs" in msg
        after = client.get(f"{API}/jobs/{job['id']}", headers=auth(keys["alice"])).json()
        assert after["note"] is None and after["spec"]["budget"]["max_trials"] == 4


@pytest.mark.parametrize("ending", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled])
def test_a_finished_job_raised_is_queued_again_with_its_trials(
    client: TestClient, store: Store, keys: dict[str, str], ending: JobStatus
) -> None:
    job = submit(client, keys["alice"], budget={"max_trials": 1})
    assert store.claim_job("runner", lease_s=60) == job["id"]
    trial = store.create_trial(job["id"], {"depth": 1})
    store.start_trial(trial.id)
    store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": 0.9})
    if ending is JobStatus.cancelled:
        client.post(f"{API}/jobs/{job['id']}/cancel", headers=auth(keys["alice"]))
    store.finish_job(job["id"], ending, None if ending is JobStatus.succeeded else "it ended")

    unchanged = _patch(client, keys["alice"], job["id"], {"max_trials": 1})  # nothing raised: it stays ended
    assert unchanged.status_code == 200 and unchanged.json()["status"] == ending.value
    reopened = _patch(client, keys["alice"], job["id"], {"max_trials": 3})
    assert reopened.status_code == 200, reopened.text
    body = reopened.json()
    assert body["status"] == "queued" and body["finished_at"] is None and body["error"] is None
    assert body["spec"]["budget"]["max_trials"] == 3 and body["n_trials"] == 1
    assert store.cancel_requested(job["id"]) is False
    assert _patch(client, keys["alice"], job["id"], {"max_trials": 3}).json()["status"] == "queued"  # repeated
    assert store.claim_job("runner-2", lease_s=60) == job["id"]  # the dispatcher resumes it
    assert [t.id for t in store.list_trials(job["id"])[0]] == [trial.id]


def test_reopening_counts_against_the_active_job_quota(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    done = submit(client, keys["alice"], budget={"max_trials": 1})
    client.post(f"{API}/jobs/{done['id']}/cancel", headers=auth(keys["alice"]))
    submit(client, keys["alice"])
    submit(client, keys["alice"])  # two active: the quota (limit_active_jobs=2)
    refused = _patch(client, keys["alice"], done["id"], {"max_trials": 2})
    assert refused.status_code == 429 and "NAS_LIMIT_ACTIVE_JOBS" in refused.json()["detail"]
    assert client.get(f"{API}/jobs/{done['id']}", headers=auth(keys["alice"])).json()["status"] == "cancelled"


def _finished_job_with_files(client: TestClient, store: Store, settings: Settings, key: str) -> tuple[str, str]:
    """A succeeded job with a trial that has epochs, layers, a model file, Tune state and a latency observation."""
    job = submit(client, key)
    job_id = job["id"]
    assert store.claim_job("runner", lease_s=60) == job_id
    parent = store.create_trial(job_id, {"depth": 1})
    store.start_trial(parent.id)
    store.report_epoch(parent.id, 0, {"accuracy": 0.5})
    store.finish_trial(parent.id, TrialState.complete, metrics={"accuracy": 0.9},
                       layers=[LayerInfo(name="fc0.weight", shape=[4, 4], density=0.5, pattern="unstructured")])
    child = store.create_trial(job_id, {"depth": 1}, parent_id=parent.id)
    store.start_trial(child.id)
    store.finish_trial(child.id, TrialState.failed, error="boom")
    store.add_artifact(save_model(settings.artifact_dir, job_id, parent.id, b"weights"))
    tune_folder(settings.home, job_id).mkdir(parents=True)
    (tune_folder(settings.home, job_id) / "experiment_state.json").write_text("{}")
    record = {"target_key": "cpu:test", "predictor_id": "p", "features": [1.0], "sum_ms": 1.0,
              "predicted_ms": 1.0, "measured_ms": 1.2, "time": 0.0}
    store.add_latency_observation(record, job_id, parent.id)
    store.finish_job(job_id, JobStatus.succeeded)
    return job_id, parent.id


def _count(store: Store, column: Any, *where: Any) -> int:
    with store.engine.connect() as connection:
        return connection.scalar(select(func.count(column)).where(*where))


def test_delete_removes_the_job_its_rows_and_files(
    client: TestClient, store: Store, settings: Settings, keys: dict[str, str]
) -> None:
    job_id, trial_id = _finished_job_with_files(client, store, settings, keys["alice"])
    assert (job_folder(settings.artifact_dir, job_id) / f"{trial_id}.safetensors").read_bytes() == b"weights"

    assert client.delete(f"{API}/jobs/{job_id}", headers=auth(keys["bob"])).status_code == 404
    response = client.delete(f"{API}/jobs/{job_id}", headers=auth(keys["alice"]))
    assert response.status_code == 204, response.text

    assert client.get(f"{API}/jobs/{job_id}", headers=auth(keys["alice"])).status_code == 404
    assert client.get(f"{API}/trials/{trial_id}", headers=auth(keys["alice"])).status_code == 404
    assert client.delete(f"{API}/jobs/{job_id}", headers=auth(keys["alice"])).status_code == 404
    assert _count(store, TrialRow.id, TrialRow.job_id == job_id) == 0
    for table in (TrialEpochRow, TrialLayerRow, ArtifactRow):
        assert _count(store, table.id, table.trial_id == trial_id) == 0
    assert not job_folder(settings.artifact_dir, job_id).exists()
    assert not tune_folder(settings.home, job_id).exists()
    # The latency predictor keeps what the job measured.
    assert [o.trial_id for o in store.latency_observations(job_id=job_id)] == [trial_id]


def test_delete_refuses_an_active_job_and_lets_an_admin_delete(
    client: TestClient, store: Store, settings: Settings, keys: dict[str, str]
) -> None:
    queued = submit(client, keys["alice"])
    refused = client.delete(f"{API}/jobs/{queued['id']}", headers=auth(keys["alice"]))
    assert refused.status_code == 409 and "is queued; cancel it first" in refused.json()["detail"]
    assert store.claim_job("runner", lease_s=60) == queued["id"]
    refused = client.delete(f"{API}/jobs/{queued['id']}", headers=auth(keys["admin"]))
    assert refused.status_code == 409 and "is running; cancel it first" in refused.json()["detail"]
    trial = store.create_trial(queued["id"], {"depth": 1}, state=TrialState.infeasible, error="too slow")
    store.add_artifact(Artifact(trial.id, "model", "safetensors", "x", 1, hashlib.sha256(b"x").hexdigest()))
    store.finish_job(queued["id"], JobStatus.cancelled, "cancelled by its owner")
    assert client.delete(f"{API}/jobs/{queued['id']}", headers=auth(keys["admin"])).status_code == 204
    assert client.get(f"{API}/jobs", headers=auth(keys["alice"])).json()["items"] == []


def test_a_raise_as_the_job_ends_queues_it_again(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    job = submit(client, keys["alice"], budget={"max_trials": 2})
    assert store.claim_job("runner", lease_s=60) == job["id"]
    ran_under = store.job_budget(job["id"])  # the runner's last look at the budget
    assert _patch(client, keys["alice"], job["id"], {"max_trials": 3}).json()["status"] == "running"
    store.finish_job(job["id"], JobStatus.succeeded)  # the runner ends the job under the budget it saw

    assert store.requeue_if_raised(job["id"], ran_under) is True
    assert store.get_job(job["id"]).status is JobStatus.queued
    assert store.claim_job("runner-2", lease_s=60) == job["id"]
    store.finish_job(job["id"], JobStatus.succeeded)
    assert store.requeue_if_raised(job["id"], store.job_budget(job["id"])) is False  # ended under its budget
    assert store.get_job(job["id"]).status is JobStatus.succeeded

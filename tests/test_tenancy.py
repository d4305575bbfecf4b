"""Tenants stay apart: on every route that takes a job or trial id, another owner's ids answer 404
and change nothing, while admins reach every owner's jobs. Real app, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import API_PREFIX, create_app
from nas.settings import Settings
from nas.specs import JobStatus, TrialState
from nas.store import Artifact, Store
from nas.store.tables import Base


def id_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every API operation with a job or trial id, so new routes are covered unasked.

    Read from the app's OpenAPI document: FastAPI 0.165 no longer lists included routes in ``app.routes``.
    """
    return [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith(API_PREFIX) and re.search(r"\{(job|trial)_id\}", path)
        for method in operations
    ]


# Any authenticated request may stamp its own key's last use; that is the caller's row, not a change.
_BOOKKEEPING = {"last_used_at"}


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order (less the keys' last-use stamps)."""
    with store.engine.connect() as connection:
        return {
            table.name: sorted(
                tuple(map(repr, row))
                for row in connection.execute(select(*(c for c in table.columns if c.name not in _BOOKKEEPING)))
            )
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
def world(store: Store, tmp_path: Path, make_spec: Any) -> dict[str, Any]:
    """Alice's finished job with a complete trial, its log and its model on disk, plus a queued job; keys for all."""
    settings = Settings(home=tmp_path / "home", data_dir=tmp_path)
    done = store.create_job(make_spec(), "alice")
    assert store.claim_job("runner", 60) == done.id
    trial = store.create_trial(done.id, {"depth": 1, "width_0": 32, "activation": "relu"})
    store.start_trial(trial.id)
    store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": 0.9, "loss": 0.1}, log="epoch 1\n")
    store.finish_job(done.id, JobStatus.succeeded)
    payload = b"weights"
    relative = f"{done.id}/{trial.id}.safetensors"
    (settings.artifact_dir / done.id).mkdir(parents=True)
    (settings.artifact_dir / relative).write_bytes(payload)
    store.add_artifact(Artifact(trial.id, "model", "safetensors", relative, len(payload), hashlib.sha256(payload).hexdigest()))
    queued = store.create_job(make_spec(), "alice")
    return {
        "settings": settings, "job_id": done.id, "trial_id": trial.id, "queued_id": queued.id,
        "bob": store.create_api_key("bob"), "admin": store.create_api_key("root", is_admin=True),
    }


def _url(path: str, world: dict[str, Any], job_id: str | None = None) -> str:
    return path.replace("{job_id}", job_id or world["job_id"]).replace("{trial_id}", world["trial_id"])


def test_every_id_route_is_covered(store: Store, tmp_path: Path) -> None:
    routes = {path for _, path in id_routes(create_app(store, Settings(home=tmp_path)))}
    expected = {"/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/trials", "/jobs/{job_id}/pareto",
                "/trials/{trial_id}", "/trials/{trial_id}/model"}
    assert {API_PREFIX + path for path in expected} <= routes


def test_other_owners_ids_answer_404_and_change_nothing(store: Store, world: dict[str, Any]) -> None:
    app = create_app(store, world["settings"])
    headers = {"Authorization": f"Bearer {world['bob']}"}
    with TestClient(app) as client:
        for job_id in (world["job_id"], world["queued_id"]):
            for method, path in id_routes(app):
                before = snapshot(store)
                body = {} if method == "PATCH" else None  # a change that is valid, and changes nothing
                response = client.request(method, _url(path, world, job_id), headers=headers, json=body)
                assert response.status_code == 404, (method, path, response.text)
                assert world["job_id"] not in response.text or "not found" in response.text
                assert snapshot(store) == before, (method, path)
        assert client.get(f"{API_PREFIX}/jobs", headers=headers).json()["items"] == []


def test_admins_act_on_every_owners_jobs(store: Store, world: dict[str, Any]) -> None:
    app = create_app(store, world["settings"])
    headers = {"Authorization": f"Bearer {world['admin']}"}
    with TestClient(app) as client:
        for method, path in sorted(id_routes(app), key=lambda route: route[0] == "DELETE"):  # deleting goes last
            body = {} if method == "PATCH" else None
            with client.stream(method, _url(path, world), headers=headers, json=body) as response:
                # the finished job cannot be cancelled again (409); one complete trial is too few to
                # rank dimensions on (422, past the owner check); everything else answers
                if path.endswith("/importance"):
                    assert response.status_code == 422 and b"complete trials" in response.read(), path
                    continue
                assert response.status_code in (200, 202, 204, 409), (method, path)
        cancelled = client.post(f"{API_PREFIX}/jobs/{world['queued_id']}/cancel", headers=headers)
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        assert [j["id"] for j in client.get(f"{API_PREFIX}/jobs", headers=headers).json()["items"]] == [world["queued_id"]]

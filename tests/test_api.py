"""The REST API over HTTP (FastAPI's httpx-based TestClient) on real SQLite and PostgreSQL stores."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from nas import registry
from nas.specs import JobSpec, JobStatus, LayerInfo, TrialState
from nas.store import Artifact, Store
from nas.settings import Settings

API = "/api/v1"
SPEC: dict[str, Any] = {
    "name": "api-test",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "budget": {"max_trials": 4},
}
JOB_FIELDS = {"id", "name", "status", "spec", "created_at", "started_at", "finished_at", "n_trials", "best_trial_id", "error"}
TRIAL_FIELDS = {"id", "job_id", "number", "state", "arch", "parent_id", "metrics", "layers", "history", "error"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    return Settings(home=tmp_path / "home", data_dir=data)


@pytest.fixture
def client(store: Store, settings: Settings) -> TestClient:
    with TestClient(create_app(store, settings)) as test_client:
        yield test_client


@pytest.fixture
def keys(store: Store) -> dict[str, str]:
    return {
        "alice": store.create_api_key("alice"),
        "bob": store.create_api_key("bob"),
        "admin": store.create_api_key("root", is_admin=True),
    }


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: TestClient, key: str, **overrides: Any) -> dict[str, Any]:
    response = client.post(f"{API}/jobs", json={**SPEC, **overrides}, headers=auth(key))
    assert response.status_code == 201, response.text
    return response.json()


def _aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0), value
    return parsed


# -- authentication ----------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/abc"),
    ("POST", "/jobs/abc/cancel"),
    ("GET", "/jobs/abc/trials"),
    ("GET", "/jobs/abc/pareto"),
    ("GET", "/trials/abc"),
    ("GET", "/trials/abc/model"),
    ("GET", "/catalog"),
]


def test_routes_need_a_valid_key(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    for method, path in PROTECTED:
        missing = client.request(method, API + path, json=SPEC if method == "POST" else None)
        assert missing.status_code == 401, path
        assert "missing API key" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"

        wrong = client.request(method, API + path, json=SPEC if method == "POST" else None,
                               headers=auth(keys["alice"] + "x"))
        assert wrong.status_code == 401, path
        assert "invalid" in wrong.json()["detail"]

        not_bearer = client.request(method, API + path, headers={"Authorization": f"Basic {keys['alice']}"})
        assert not_bearer.status_code == 401, path
    assert store.list_jobs() == ([], None)  # the unauthenticated POSTs stored nothing


def test_healthz_needs_no_key(client: TestClient) -> None:
    response = client.get(f"{API}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


# -- submitting --------------------------------------------------------------------------------


def test_submit_returns_job(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    before = datetime.now(timezone.utc)
    response = client.post(f"{API}/jobs", json=SPEC, headers=auth(keys["alice"]))
    assert response.status_code == 201, response.text
    job = response.json()
    assert JOB_FIELDS <= set(job)
    assert job["name"] == "api-test"
    assert job["status"] == "queued"
    assert job["n_trials"] == 0
    assert job["started_at"] is None and job["finished_at"] is None
    assert job["best_trial_id"] is None and job["error"] is None
    assert _aware(job["created_at"]) >= before - timedelta(seconds=5)

    spec = job["spec"]  # every default filled in
    assert spec["search_space"]["name"] == "sparse_mlp"
    assert spec["search_space"]["params"]  # the space's defaults
    assert spec["strategy"]["name"] == "random"
    assert spec["sparsifier"] == {"name": "magnitude", "params": {**spec["sparsifier"]["params"], "sparsity": 0.9}}
    assert spec["training"]["epochs"] == 3 and spec["training"]["optimizer"] == "adam"
    assert spec["objectives"] == [{"metric": "accuracy", "direction": "maximize"}]
    assert spec["budget"]["max_trials"] == 4
    assert spec["target"] == "cpu" and spec["seed"] == 0

    stored = store.get_job(job["id"])
    assert stored.owner == "alice" and stored.spec == spec
    assert client.get(f"{API}/jobs/{job['id']}", headers=auth(keys["alice"])).json() == job


def _loc(response: Any) -> list[list[Any]]:
    return [e["loc"] for e in response.json()["detail"]]


def _messages(response: Any) -> str:
    return " ".join(e["msg"] for e in response.json()["detail"])


@pytest.mark.parametrize(
    ("overrides", "loc", "words"),
    [
        ({"training": {"epochs": 0}}, ["body", "training", "epochs"], ["greater than or equal to 1"]),
        ({"search_space": {"name": "no_such_space"}}, ["body", "search_space", "name"], ["no_such_space", "sparse_mlp"]),
        ({"strategy": {"name": "grid"}}, ["body", "strategy", "name"], ["grid", "random"]),
        ({"dataset": {"name": "imagenet"}}, ["body", "dataset", "name"], ["imagenet", "digits", "mnist"]),
        ({"unknown_field": 1}, ["body", "unknown_field"], ["unknown field 'unknown_field' in the body (valid: name, search_space"]),
        ({"sparsifier": {"name": "magnitude", "params": {"sparsity": 1.5}}}, ["body", "sparsifier", "params", "sparsity"], ["less than 1"]),
        ({"sparsifier": {"name": "magnitude", "params": {"bogus": 1}}}, ["body", "sparsifier", "params", "bogus"], ["unknown field 'bogus' in sparsifier.params (valid: sparsity,"]),
        ({"sparsifier": {"name": "gmp", "params": {"sparsity": 0.8, "final_sparsity": 0.8}}}, ["body", "sparsifier", "params"], ["give sparsity or its alias final_sparsity, not both"]),
        ({"sparsifier": {"name": "hydra", "params": {"sparsity": 0.9, "k": 0.1}}}, ["body", "sparsifier", "params"], ["give sparsity or its alias k, not both"]),
        ({"objectives": [{"metric": "speed", "direction": "maximize"}]}, ["body", "objectives", 0, "metric"], ["speed", "accuracy", "latency_ms"]),
        ({"objectives": [{"metric": "accuracy", "direction": "up"}]}, ["body", "objectives", 0, "direction"], ["maximize"]),
        ({"objectives": []}, ["body", "objectives"], ["at least 1"]),
        ({"target": "tpu"}, ["body", "target"], ["tpu", "cpu"]),
        ({"budget": {"max_trials": 0}}, ["body", "budget", "max_trials"], []),
    ],
)
def test_invalid_spec_names_the_field(
    client: TestClient, store: Store, keys: dict[str, str], overrides: dict[str, Any], loc: list[Any], words: list[str]
) -> None:
    response = client.post(f"{API}/jobs", json={**SPEC, **overrides}, headers=auth(keys["alice"]))
    assert response.status_code == 422, response.text
    assert loc in _loc(response)
    for word in words:
        assert word in _messages(response)
    assert store.list_jobs() == ([], None)  # nothing stored


def test_missing_required_field_and_non_json(client: TestClient, keys: dict[str, str]) -> None:
    body = {k: v for k, v in SPEC.items() if k != "dataset"}
    response = client.post(f"{API}/jobs", json=body, headers=auth(keys["alice"]))
    assert response.status_code == 422
    assert ["body", "dataset"] in _loc(response)

    response = client.post(
        f"{API}/jobs", content=b"name: [yaml", headers={**auth(keys["alice"]), "Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_mnist_without_files_is_rejected(client: TestClient, settings: Settings, keys: dict[str, str]) -> None:
    response = client.post(f"{API}/jobs", json={**SPEC, "dataset": {"name": "mnist"}}, headers=auth(keys["alice"]))
    assert response.status_code == 422, response.text
    assert ["body", "dataset", "name"] in _loc(response)
    message = _messages(response)
    assert "train-images-idx3-ubyte.gz" in message and str(settings.data_dir) in message

    # With the four files present (their content is checked only when a trial loads them) it is accepted.
    folder = settings.data_dir / "mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(b"")
    assert submit(client, keys["alice"], dataset={"name": "mnist"})["spec"]["dataset"]["name"] == "mnist"


def test_oversized_body_is_413(client: TestClient, settings: Settings, keys: dict[str, str]) -> None:
    padding = "x" * (settings.max_body_bytes + 10)
    response = client.post(f"{API}/jobs", json={**SPEC, "name": padding}, headers=auth(keys["alice"]))
    assert response.status_code == 413
    assert "too large" in response.json()["detail"] or "larger than" in response.json()["detail"]

    # Sent chunked, without a declared length, it is refused too; a small chunked body passes.
    def chunks(total: int):  # noqa: ANN202
        yield b'{"name": "' + b"y" * total + b'", '
        yield json.dumps({k: v for k, v in SPEC.items() if k != "name"})[1:].encode()

    headers = {**auth(keys["alice"]), "Content-Type": "application/json"}
    chunked = client.post(f"{API}/jobs", content=chunks(settings.max_body_bytes), headers=headers)
    assert chunked.status_code == 413
    small = client.post(f"{API}/jobs", content=chunks(10), headers=headers)
    assert small.status_code == 201, small.text
    assert small.json()["name"] == "y" * 10


# -- ownership ---------------------------------------------------------------------------------


def test_other_owner_gets_404_everywhere(client: TestClient, store: Store, keys: dict[str, str], settings: Settings) -> None:
    job = submit(client, keys["alice"])
    trial = store.create_trial(job["id"], {"depth": 1})
    store.start_trial(trial.id)
    store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": 0.9})
    path = f"{job['id']}/{trial.id}.safetensors"
    (settings.artifact_dir / job["id"]).mkdir(parents=True)
    (settings.artifact_dir / path).write_bytes(b"weights")
    store.add_artifact(Artifact(trial.id, "model", "safetensors", path, 7, hashlib.sha256(b"weights").hexdigest()))

    routes = [
        ("GET", f"/jobs/{job['id']}"),
        ("POST", f"/jobs/{job['id']}/cancel"),
        ("GET", f"/jobs/{job['id']}/trials"),
        ("GET", f"/jobs/{job['id']}/pareto"),
        ("GET", f"/trials/{trial.id}"),
        ("GET", f"/trials/{trial.id}/model"),
    ]
    for method, route in routes:
        response = client.request(method, API + route, headers=auth(keys["bob"]))
        assert response.status_code == 404, (route, response.text)
        assert "not found" in response.json()["detail"]
        assert client.request(method, API + route.replace(job["id"], "f" * 32).replace(trial.id, "e" * 32),
                              headers=auth(keys["alice"])).status_code == 404
    assert store.get_job(job["id"]).status is JobStatus.queued  # bob's cancel did nothing
    assert client.get(f"{API}/jobs", headers=auth(keys["bob"])).json() == {"items": [], "next_cursor": None}

    for method, route in routes[:1] + routes[2:]:  # the admin (and the owner) see everything
        assert client.request(method, API + route, headers=auth(keys["admin"])).status_code == 200, route
        assert client.request(method, API + route, headers=auth(keys["alice"])).status_code == 200, route


def test_admin_lists_every_owner(client: TestClient, keys: dict[str, str]) -> None:
    a = submit(client, keys["alice"])
    b = submit(client, keys["bob"])
    listed = client.get(f"{API}/jobs", headers=auth(keys["admin"])).json()["items"]
    assert [j["id"] for j in listed] == [b["id"], a["id"]]
    assert [j["id"] for j in client.get(f"{API}/jobs", headers=auth(keys["alice"])).json()["items"]] == [a["id"]]
    cancelled = client.post(f"{API}/jobs/{a['id']}/cancel", headers=auth(keys["admin"]))
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"


# -- listing -----------------------------------------------------------------------------------


def test_jobs_cursor_pagination(client: TestClient, keys: dict[str, str]) -> None:
    ids = [submit(client, keys["alice"], name=f"job-{i}")["id"] for i in range(5)]
    submit(client, keys["bob"])
    seen, pages, cursor = [], [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = client.get(f"{API}/jobs", params=params, headers=auth(keys["alice"]))
        assert response.status_code == 200
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        pages.append(len(page["items"]))
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert pages == [2, 2, 1]
    assert seen == list(reversed(ids))


def test_jobs_status_filter_and_bad_queries(client: TestClient, keys: dict[str, str]) -> None:
    a = submit(client, keys["alice"])
    b = submit(client, keys["alice"])
    assert client.post(f"{API}/jobs/{a['id']}/cancel", headers=auth(keys["alice"])).status_code == 202
    h = auth(keys["alice"])
    assert [j["id"] for j in client.get(f"{API}/jobs", params={"status": "cancelled"}, headers=h).json()["items"]] == [a["id"]]
    assert [j["id"] for j in client.get(f"{API}/jobs", params={"status": "queued"}, headers=h).json()["items"]] == [b["id"]]
    assert client.get(f"{API}/jobs", params={"status": "sleeping"}, headers=h).status_code == 422
    assert client.get(f"{API}/jobs", params={"limit": 0}, headers=h).status_code == 422
    assert client.get(f"{API}/jobs", params={"cursor": "not a cursor!"}, headers=h).status_code == 422


def test_an_unknown_query_parameter_is_refused_by_name(client: TestClient, keys: dict[str, str]) -> None:
    """A misspelt filter answers 422 naming it, not an unfiltered list; a route's own parameters pass."""
    h = auth(keys["alice"])
    job = submit(client, keys["alice"])
    for url, params in ((f"{API}/jobs", {"stauts": "failed"}), (f"{API}/jobs/{job['id']}/trials", {"": "1"})):
        response = client.get(url, params=params, headers=h)
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        name = next(iter(params))
        assert error["loc"] == ["query", name] and repr(name) in error["msg"]
    assert "limit" in client.get(f"{API}/jobs", params={"x": "1"}, headers=h).json()["detail"][0]["msg"]
    assert client.get(f"{API}/jobs/{job['id']}/trials", params={"limit": 5}, headers=h).status_code == 200


def test_trials_cursor_pagination(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    job = submit(client, keys["alice"])
    ids = [store.create_trial(job["id"], {"depth": i % 3, "i": i}).id for i in range(7)]
    for trial_id in ids[1::2]:
        store.start_trial(trial_id)
    h = auth(keys["alice"])
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"{API}/jobs/{job['id']}/trials", params=params, headers=h).json()
        assert len(page["items"]) <= 3
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [t["id"] for t in seen] == ids
    assert [t["number"] for t in seen] == list(range(7))
    assert TRIAL_FIELDS - {"layers", "history"} <= set(seen[0])
    assert seen[0]["job_id"] == job["id"] and seen[0]["arch"] == {"depth": 0, "i": 0}

    running = client.get(f"{API}/jobs/{job['id']}/trials", params={"state": "running"}, headers=h).json()
    assert [t["number"] for t in running["items"]] == [1, 3, 5] and running["next_cursor"] is None
    assert client.get(f"{API}/jobs/{job['id']}/trials", params={"state": "done"}, headers=h).status_code == 422
    assert client.get(f"{API}/jobs/{job['id']}", headers=h).json()["n_trials"] == 7


# -- cancelling --------------------------------------------------------------------------------


def test_cancel(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    h = auth(keys["alice"])
    queued = submit(client, keys["alice"])
    response = client.post(f"{API}/jobs/{queued['id']}/cancel", headers=h)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"] is not None

    again = client.post(f"{API}/jobs/{queued['id']}/cancel", headers=h)
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]

    running = submit(client, keys["alice"])
    assert store.claim_job("runner", lease_s=60) == running["id"]
    response = client.post(f"{API}/jobs/{running['id']}/cancel", headers=h)
    assert response.status_code == 202
    assert response.json()["status"] == "running"  # the runner stops it
    assert store.cancel_requested(running["id"]) is True

    store.finish_job(running["id"], JobStatus.succeeded)
    response = client.post(f"{API}/jobs/{running['id']}/cancel", headers=h)
    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]
    assert client.get(f"{API}/jobs/{running['id']}", headers=h).json()["status"] == "succeeded"


# -- trials ------------------------------------------------------------------------------------


def test_trial_detail_has_history_and_layers(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    job = submit(client, keys["alice"])
    trial = store.create_trial(job["id"], {"depth": 2, "widths": [64, 32]})
    store.start_trial(trial.id, node_id="n1")
    for epoch in range(3):
        store.report_epoch(trial.id, epoch, {"accuracy": 0.6 + 0.1 * epoch, "loss": 1.0 / (epoch + 1)})
    layers = [
        LayerInfo(name="net.0", shape=[64, 64], density=0.1, pattern="unstructured"),
        LayerInfo(name="net.2", shape=[32, 64], density=0.25, pattern="unstructured"),
        LayerInfo(name="head", shape=[10, 32], density=1.0, pattern="dense"),
    ]
    metrics = {"accuracy": 0.8, "loss": 0.33, "sparsity": 0.85, "nonzero_params": 1000.0, "params": 6000.0}
    store.finish_trial(trial.id, TrialState.complete, metrics=metrics, layers=layers)

    response = client.get(f"{API}/trials/{trial.id}", headers=auth(keys["alice"]))
    assert response.status_code == 200
    body = response.json()
    assert TRIAL_FIELDS <= set(body)
    assert body["state"] == "complete" and body["number"] == 0 and body["job_id"] == job["id"]
    assert body["arch"] == {"depth": 2, "widths": [64, 32]}
    assert body["metrics"] == metrics
    assert [h["epoch"] for h in body["history"]] == [0, 1, 2]
    assert body["history"][2]["metrics"]["accuracy"] == pytest.approx(0.8)
    assert body["layers"] == [layer.model_dump() for layer in layers]
    assert body["has_model"] is False
    for key in ("created_at", "started_at", "finished_at"):
        _aware(body[key])


def test_trial_log_is_plain_text_owned_and_says_why_it_is_missing(
    client: TestClient, store: Store, keys: dict[str, str]
) -> None:
    h = auth(keys["alice"])
    job = submit(client, keys["alice"])
    store.claim_job("runner", lease_s=30)
    trial = store.create_trial(job["id"], {"depth": 1})
    queued = client.get(f"{API}/trials/{trial.id}/log", headers=h)
    assert queued.status_code == 404 and "has not run yet" in queued.json()["detail"]
    store.start_trial(trial.id)
    running = client.get(f"{API}/trials/{trial.id}/log", headers=h)
    assert running.status_code == 404 and "has reported no epoch yet" in running.json()["detail"]
    store.report_epoch(trial.id, 1, {"val_accuracy": 0.5}, log="INFO epoch 1: accuracy 0.5\n")
    so_far = client.get(f"{API}/trials/{trial.id}/log", headers=h)  # a running trial's log so far
    assert so_far.status_code == 200 and so_far.text == "INFO epoch 1: accuracy 0.5\n"
    assert client.get(f"{API}/trials/{trial.id}", headers=h).json()["has_log"] is True
    log = "INFO epoch 1: accuracy 0.5\nTraceback (most recent call last):\nValueError: <b>bad</b>\n"
    store.finish_trial(trial.id, TrialState.failed, error="ValueError: <b>bad</b>", log=log)

    response = client.get(f"{API}/trials/{trial.id}/log", headers=h)
    assert response.status_code == 200 and response.text == log
    assert response.headers["content-type"].startswith("text/plain")
    assert client.get(f"{API}/trials/{trial.id[:8]}/log", headers=h).text == log  # a unique prefix
    hidden = client.get(f"{API}/trials/{trial.id}/log", headers=auth(keys["bob"]))
    assert hidden.status_code == 404 and hidden.json()["detail"] == f"trial {trial.id} not found"
    assert client.get(f"{API}/trials/{trial.id}/log", headers=auth(keys["admin"])).text == log

    # A trial its job's cancel request ended before it ran: cancelled, with no log, saying so.
    waiting = store.create_trial(job["id"], {"depth": 2})
    assert client.post(f"{API}/jobs/{job['id']}/cancel", headers=h).status_code == 202
    cancelled = client.get(f"{API}/jobs/{job['id']}/trials", params={"state": "cancelled"}, headers=h).json()["items"]
    assert [t["id"] for t in cancelled] == [waiting.id]
    never = client.get(f"{API}/trials/{waiting.id}/log", headers=h)
    assert never.status_code == 404 and "never ran (cancelled" in never.json()["detail"]


def test_model_download(client: TestClient, store: Store, settings: Settings, keys: dict[str, str]) -> None:
    h = auth(keys["alice"])
    job = submit(client, keys["alice"])
    trial = store.create_trial(job["id"], {"depth": 1})
    store.start_trial(trial.id)
    store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": 0.9})

    response = client.get(f"{API}/trials/{trial.id}/model", headers=h)
    assert response.status_code == 404
    assert "no model" in response.json()["detail"]

    payload = bytes(range(256)) * 40
    relative = f"{job['id']}/{trial.id}.safetensors"
    (settings.artifact_dir / job["id"]).mkdir(parents=True)
    (settings.artifact_dir / relative).write_bytes(payload)
    store.add_artifact(Artifact(trial.id, "model", "safetensors", relative, len(payload), hashlib.sha256(payload).hexdigest()))

    response = client.get(f"{API}/trials/{trial.id}/model", headers=h)
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["content-type"] == "application/octet-stream"
    assert f"trial-{trial.id}.safetensors" in response.headers["content-disposition"]
    assert client.get(f"{API}/trials/{trial.id}", headers=h).json()["has_model"] is True

    # ONNX is exported from the stored model on first request; these bytes are no model.
    onnx = client.get(f"{API}/trials/{trial.id}/model", params={"format": "onnx"}, headers=h)
    assert onnx.status_code == 500 and f"export of trial {trial.id} failed" in onnx.json()["detail"]
    assert client.get(f"{API}/trials/{trial.id}/model", params={"format": "pickle"}, headers=h).status_code == 422

    # A record whose file is gone, or that points outside the artifact folder, is a 404, not a 500.
    store.add_artifact(Artifact(trial.id, "model", "inference.onnx", f"{job['id']}/gone.onnx", 1, "0" * 64))
    missing = client.get(f"{API}/trials/{trial.id}/model", params={"format": "onnx"}, headers=h)
    assert missing.status_code == 404 and "missing" in missing.json()["detail"]
    outside = settings.home / "secret.txt"
    outside.write_text("secret")
    store.add_artifact(Artifact(trial.id, "model", "inference.onnx", "../secret.txt", 6, "0" * 64))
    escaped = client.get(f"{API}/trials/{trial.id}/model", params={"format": "onnx"}, headers=h)
    assert escaped.status_code == 404 and escaped.content != b"secret"


# -- Pareto front ------------------------------------------------------------------------------


def test_pareto_front(client: TestClient, store: Store, keys: dict[str, str]) -> None:
    objectives = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]
    job = submit(client, keys["alice"], objectives=objectives)

    def trial(state: TrialState, **metrics: float) -> str:
        t = store.create_trial(job["id"], {"n": len(metrics), **{k: v for k, v in metrics.items()}})
        store.start_trial(t.id)
        store.finish_trial(t.id, state, metrics=metrics)
        return t.id

    fast = trial(TrialState.complete, accuracy=0.80, latency_ms=2.0)
    accurate = trial(TrialState.complete, accuracy=0.90, latency_ms=5.0)
    trial(TrialState.complete, accuracy=0.85, latency_ms=6.0)  # dominated by `accurate`
    tie = trial(TrialState.complete, accuracy=0.80, latency_ms=2.0)  # equal to `fast`: both kept
    trial(TrialState.complete, accuracy=0.70, latency_ms=2.0)  # dominated by `fast`
    trial(TrialState.pruned, accuracy=0.99, latency_ms=0.1)  # not complete
    trial(TrialState.complete, accuracy=0.99)  # lacks an objective
    store.create_trial(job["id"], {"queued": True})

    response = client.get(f"{API}/jobs/{job['id']}/pareto", headers=auth(keys["alice"]))
    assert response.status_code == 200
    items = response.json()["items"]
    assert {t["id"] for t in items} == {fast, accurate, tie}
    assert all(t["state"] == "complete" for t in items)

    empty = submit(client, keys["alice"])
    assert client.get(f"{API}/jobs/{empty['id']}/pareto", headers=auth(keys["alice"])).json() == {"items": []}


# -- catalog -----------------------------------------------------------------------------------


def test_catalog_lists_every_registered_name(client: TestClient, keys: dict[str, str]) -> None:
    response = client.get(f"{API}/catalog", headers=auth(keys["alice"]))
    assert response.status_code == 200
    catalog = response.json()
    for kind, reg in [
        ("search_spaces", registry.search_spaces),
        ("strategies", registry.strategies),
        ("sparsifiers", registry.sparsifiers),
        ("datasets", registry.datasets),
    ]:
        entries = catalog[kind]
        assert [e["name"] for e in entries] == reg.names()
        assert entries, kind
        for entry in entries:
            assert isinstance(entry["params_schema"], dict)
            assert entry["params_schema"].get("type") == "object", (kind, entry["name"])
    assert "sparse_mlp" in [e["name"] for e in catalog["search_spaces"]]
    assert {"digits", "mnist"} <= {e["name"] for e in catalog["datasets"]}
    for entry in catalog["sparsifiers"]:  # one knob name; N:M's pattern fixes its sparsity
        properties = entry["params_schema"]["properties"]
        assert ("sparsity" in properties) == (entry["name"] != "nm"), entry["name"]
        assert not {"final_sparsity", "k"} & properties.keys(), entry["name"]
    assert [t["name"] for t in catalog["targets"]] == ["cpu"]
    assert all("params_schema" in t for t in catalog["targets"])


@pytest.mark.parametrize(
    ("name", "alias", "canonical"), [("gmp", {"final_sparsity": 0.8}, {"sparsity": 0.8}), ("hydra", {"k": 0.2}, {"sparsity": 0.8})]
)
def test_a_papers_name_for_the_sparsity_is_stored_as_sparsity(
    client: TestClient, keys: dict[str, str], name: str, alias: dict[str, float], canonical: dict[str, float]
) -> None:
    by_alias = submit(client, keys["alice"], sparsifier={"name": name, "params": alias})
    by_name = submit(client, keys["alice"], sparsifier={"name": name, "params": canonical})
    assert by_alias["spec"]["sparsifier"] == by_name["spec"]["sparsifier"]
    assert by_alias["spec"]["sparsifier"]["params"]["sparsity"] == 0.8


@pytest.mark.parametrize(
    ("sparsifier", "density"),
    [
        ({"name": "gmp", "params": {"final_sparsity": 0.8}}, 0.2),
        ({"name": "hydra", "params": {"k": 0.3}}, 0.3),
        ({"name": "lottery", "params": {"sparsity": 0.75}}, 0.25),
        ({"name": "lottery"}, 1.0),  # per-round rates name no overall sparsity: planned dense
        ({"name": "nm", "params": {"n": 1, "m": 4}}, 0.25),
    ],
)
def test_candidates_are_planned_at_the_sparsity_whatever_name_gave_it(sparsifier: dict[str, Any], density: float) -> None:
    """The runner predicts a candidate's latency at the density the sparsifier will train it to."""
    from workers.feasibility import _target_density

    spec = JobSpec.model_validate({**SPEC, "sparsifier": sparsifier})
    assert _target_density(spec) == pytest.approx(density)


def test_pareto_front_agrees_with_brute_force_on_random_trials() -> None:
    """The front's sweep (best-first, compared with the front so far) equals the definition."""
    import random
    from datetime import datetime, timezone

    from nas.pareto import pareto_front
    from nas.specs import Objective, Trial, TrialState

    rng = random.Random(7)
    objectives = [Objective(metric="accuracy", direction="maximize"), Objective(metric="latency_ms", direction="minimize"),
                  Objective(metric="sparsity", direction="maximize")]
    now = datetime.now(timezone.utc)
    trials = [
        Trial(id=str(i), job_id="j", number=i, state=rng.choice([TrialState.complete] * 4 + [TrialState.failed]),
              arch={}, created_at=now,
              metrics={"accuracy": rng.choice([0.8, 0.9, 0.95]), "latency_ms": rng.choice([1.0, 2.0, 3.0]),
                       "sparsity": rng.choice([0.5, 0.9])})
        for i in range(300)
    ]

    def beats(a: Trial, b: Trial) -> bool:
        x = (a.metrics["accuracy"], -a.metrics["latency_ms"], a.metrics["sparsity"])
        y = (b.metrics["accuracy"], -b.metrics["latency_ms"], b.metrics["sparsity"])
        return all(p >= q for p, q in zip(x, y)) and x != y

    complete = [t for t in trials if t.state is TrialState.complete]
    expected = [t.id for t in complete if not any(beats(o, t) for o in complete)]
    assert [t.id for t in pareto_front(trials, objectives)] == expected

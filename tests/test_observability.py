"""Observability: ``/metrics`` from the store, request ids in headers and logs, JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from nas.client import Client, ServerError
from nas.logging_setup import json_formatter
from nas.settings import Settings
from nas.specs import JobStatus, TrialState
from nas.store import Store
from benchmarks.server_process import free_port

API = "/api/v1"


@pytest.fixture
def app(store: Store, tmp_path: Path) -> FastAPI:
    return create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_jobs_and_trials_from_the_store(client: TestClient, store: Store, make_spec: Any) -> None:
    queued = [store.create_job(make_spec(), "alice") for _ in range(3)]
    running = store.claim_job("test-runner", 60)
    assert running == queued[0].id
    done = store.create_trial(running, {"hidden": [8]})
    store.start_trial(done.id)
    store.finish_trial(done.id, TrialState.complete, {"accuracy": 0.5, "latency_ms": 2.0, "predicted_latency_ms": 2.5})
    store.create_trial(running, {"hidden": [4]})
    store.create_trial(running, {"hidden": [2]}, state=TrialState.infeasible)

    response = client.get("/metrics", headers=auth(store.create_api_key("ops", is_admin=True)))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("nas_jobs", (("status", "queued"),))] == 2
    assert found[("nas_jobs", (("status", "running"),))] == 1
    assert found[("nas_jobs", (("status", JobStatus.succeeded.value),))] == 0
    assert found[("nas_queue_depth", ())] == 2
    assert found[("nas_trials", (("state", "complete"),))] == 1
    assert found[("nas_trials", (("state", "queued"),))] == 1
    assert found[("nas_trials", (("state", "infeasible"),))] == 1
    assert found[("nas_trials", (("state", "running"),))] == 0
    assert found[("nas_trial_duration_seconds_count", (("state", "complete"),))] == 1
    assert found[("nas_trial_duration_seconds_bucket", (("le", "+Inf"), ("state", "complete")))] == 1
    assert ("nas_trial_duration_seconds_count", (("state", "infeasible"),)) not in found  # never started
    assert found[("nas_latency_predictor_error", (("target", "cpu"),))] == pytest.approx(0.25)


def test_metrics_need_an_admin_key_and_answer_at_both_paths(client: TestClient, store: Store) -> None:
    admin, user = store.create_api_key("ops", is_admin=True), store.create_api_key("alice")
    for path in ("/metrics", f"{API}/metrics"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=auth(user)).status_code == 403
        assert "nas_jobs" in client.get(path, headers=auth(admin)).text
    schema_paths = client.get(f"{API}/openapi.json").json()["paths"]
    assert f"{API}/metrics" in schema_paths and "/metrics" not in schema_paths


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_request_id_is_echoed_and_in_every_log_record_of_the_request(
    client: TestClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    key = store.create_api_key("alice")
    with caplog.at_level(logging.INFO):
        response = client.get(f"{API}/jobs", headers={**auth(key), "X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
    access = [r for r in caplog.records if r.name == "nas.access"]
    assert len(access) == 1
    line = access[0]
    assert (line.request_id, line.owner, line.method, line.path, line.status) == (
        "trace-42", "alice", "GET", f"{API}/jobs", 200
    )
    assert line.duration_ms >= 0

    generated = client.get(f"{API}/healthz").headers["X-Request-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    forged = client.get(f"{API}/healthz", headers={"X-Request-ID": "bad id\tinjected"}).headers["X-Request-ID"]
    assert forged != "bad id\tinjected" and len(forged) == 32


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_unhandled_error_answers_500_with_the_request_id(
    app: FastAPI, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Over real HTTP (uvicorn in a thread), so the SDK sees what a user would."""

    @app.get(f"{API}/jobs/{{job_id}}/explode")
    def explode(job_id: str) -> None:
        raise RuntimeError("boom")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
        with Client(f"http://127.0.0.1:{port}", "unused") as sdk, caplog.at_level(logging.INFO):
            with pytest.raises(ServerError) as raised:
                sdk._request("GET", "/jobs/x/explode")
    finally:
        server.should_exit = True
        thread.join(30)
    error = raised.value
    assert error.status == 500 and error.request_id and error.request_id in str(error)
    failure = [r for r in caplog.records if r.exc_info and r.name == "api.request_context"]
    assert failure and failure[0].request_id == error.request_id


def test_json_log_lines_carry_the_request_fields(client: TestClient, store: Store) -> None:
    key = store.create_api_key("alice")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    access = logging.getLogger("nas.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        client.get(f"{API}/jobs/nope", headers={**auth(key), "X-Request-ID": "r-1"})
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert {"timestamp", "level", "logger", "message"} <= record.keys()
    assert record["level"] == "INFO" and record["logger"] == "nas.access"
    assert (record["request_id"], record["owner"], record["method"], record["status"]) == ("r-1", "alice", "GET", 404)
    assert record["path"] == f"{API}/jobs/nope" and isinstance(record["duration_ms"], float)

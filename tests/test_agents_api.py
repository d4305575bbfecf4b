"""Measurement agents over HTTP against a live server: agent keys only measure (403 on every user
route, and a user key gets 403 on the agent routes); registration creates the owner's target,
which GET /targets shows with its agents and no other owner sees; tasks are leased to one agent at
a time, renewed, re-leased after their lease expires, and their result is taken once; a job may
name an agent target, and its runtime is chosen from what the agents offer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from api.app import API_PREFIX
from nas.settings import Settings
from nas.store import Store
from nas.store.artifacts import save_measurement_model
from nas.store.measurements import MAX_ATTEMPTS
from nas.store.tables import MeasurementTaskRow, utcnow
from tests.sdk_server import serve

AGENTS = f"{API_PREFIX}/agents"
HARDWARE = {"cpu": "Test CPU 3000", "cores": 2, "memory_gb": 4.0, "os": "Linux", "accelerator": None}
ORT = {"name": "onnxruntime", "version": "1.32.0", "device": "cpu"}


@dataclass
class Live:
    client: httpx.Client
    store: Store
    settings: Settings
    keys: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def register(self, who: str, target: str, name: str, runtimes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body = {"target": target, "name": name, "hardware": HARDWARE, "runtimes": runtimes or [ORT]}
        response = self.client.post(AGENTS, json=body, headers=self.auth(who))
        assert response.status_code == 201, response.text
        return response.json()

    def queue(self, target: str, owner: str = "alice", runtime: str = "onnxruntime") -> str:
        record = self.store.measurements.target(owner, target)
        path = save_measurement_model(self.settings.artifact_dir, "f" * 32, b"onnx bytes")
        return self.store.measurements.create_task(record.id, "calibration", runtime, [4], path).id

    def lease(self, who: str, agent_id: str) -> httpx.Response:
        return self.client.post(f"{AGENTS}/{agent_id}/lease", params={"wait": 0}, headers=self.auth(who))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = serve(tmp_path_factory.mktemp("agents-api"), auth_failures_per_minute=10**6)
    running = next(server)
    keys = {owner: running.store.create_api_key(owner) for owner in ("alice", "bob")}
    keys |= {f"{owner}-agent": running.store.create_api_key(owner, kind="agent") for owner in ("alice", "bob")}
    with httpx.Client(base_url=running.url, timeout=60) as client:
        yield Live(client, running.store, running.settings, keys)
    server.close()


@pytest.mark.parametrize("method,path", [
    ("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/models"), ("POST", "/models"), ("GET", "/datasets"),
    ("GET", "/trials/0123abcd"), ("GET", "/keys"), ("GET", "/whoami"), ("GET", "/targets"),
])  # fmt: skip
def test_an_agent_key_gets_403_on_user_routes(live: Live, method: str, path: str) -> None:
    response = live.client.request(method, f"{API_PREFIX}{path}", headers=live.auth("alice-agent"))
    assert response.status_code == 403, response.text
    assert "agent key only measures" in response.json()["detail"]


def test_a_user_key_gets_403_on_agent_routes(live: Live) -> None:
    body = {"target": "lab", "name": "a", "runtimes": [ORT]}
    response = live.client.post(AGENTS, json=body, headers=live.auth("alice"))
    assert response.status_code == 403
    assert "--agent" in response.json()["detail"]


def test_registration_creates_the_owners_target_shown_with_its_agents(live: Live) -> None:
    first = live.register("alice-agent", "lab-pi", "pi-1")
    again = live.register("alice-agent", "lab-pi", "pi-1")
    assert again["id"] == first["id"]  # an agent restarted under its name is the same agent
    live.register("alice-agent", "lab-pi", "pi-2", [ORT, {"name": "torch", "version": "2.13.0"}])
    targets = live.client.get(f"{API_PREFIX}/targets", headers=live.auth("alice")).json()["items"]
    builtin = [t for t in targets if t["kind"] == "builtin"]
    assert [t["name"] for t in builtin][:1] == ["cpu"]
    (pi,) = [t for t in targets if t["name"] == "lab-pi"]
    assert pi["kind"] == "agent" and pi["owner"] == "alice"
    assert pi["online_agents"] == 2 and [a["name"] for a in pi["agents"]] == ["pi-1", "pi-2"]
    assert pi["runtimes"] == ["torch", "onnxruntime"] and pi["predictor"] is None
    assert pi["agents"][0]["hardware"]["cpu"] == "Test CPU 3000"
    bob = live.client.get(f"{API_PREFIX}/targets", headers=live.auth("bob")).json()["items"]
    assert "lab-pi" not in [t["name"] for t in bob]
    assert live.client.get(f"{API_PREFIX}/targets/lab-pi", headers=live.auth("bob")).status_code == 404
    # bob's agent key cannot act as alice's agent
    assert live.lease("bob-agent", first["id"]).status_code == 404


def test_a_bad_registration_is_refused_naming_the_field(live: Live) -> None:
    body = {"target": "Lab Pi/../x", "name": "a", "runtimes": [{"name": "tflite"}]}
    response = live.client.post(AGENTS, json=body, headers=live.auth("alice-agent"))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert ["body", "target"] in [error["loc"] for error in detail]
    assert any("unknown runtime 'tflite'" in error["msg"] for error in detail)


def test_a_task_is_leased_to_one_agent_renewed_and_its_result_taken_once(live: Live) -> None:
    a = live.register("alice-agent", "lease-lab", "a")["id"]
    b = live.register("alice-agent", "lease-lab", "b")["id"]
    task_id = live.queue("lease-lab")
    leased = live.lease("alice-agent", a)
    assert leased.status_code == 200, leased.text
    task = leased.json()
    assert task["id"] == task_id and task["format"] == "onnx" and task["input_shape"] == [4]
    assert live.lease("alice-agent", b).status_code == 204  # nobody else gets it while the lease holds
    model = live.client.get(task["model_url"], headers=live.auth("alice-agent"))
    assert model.status_code == 200 and model.content == b"onnx bytes"
    assert live.client.get(task["model_url"], headers=live.auth("bob-agent")).status_code == 404
    beat = live.client.post(f"{AGENTS}/{a}/tasks/{task_id}/heartbeat", json={"lease_id": task["lease_id"]},
                            headers=live.auth("alice-agent"))  # fmt: skip
    assert beat.status_code == 200 and beat.json()["lease_s"] > 0
    stats = {"p10_ms": 1.5, "median_ms": 1.7, "iqr_ms": 0.1}
    result = {"lease_id": task["lease_id"], "stats": stats, "runtime": ORT}
    done = live.client.put(f"{AGENTS}/{a}/tasks/{task_id}/result", json=result, headers=live.auth("alice-agent"))
    assert done.status_code == 200 and done.json() == {"state": "done"}
    again = {**result, "stats": {"p10_ms": 9.0, "median_ms": 9.0}}
    repeat = live.client.put(f"{AGENTS}/{a}/tasks/{task_id}/result", json=again, headers=live.auth("alice-agent"))
    assert repeat.status_code == 200
    stored = live.store.measurements.task(task_id)
    assert stored.result is not None and stored.result["stats"]["p10_ms"] == 1.5 and stored.result["agent"] == "a"
    agents = live.client.get(f"{API_PREFIX}/targets/lease-lab", headers=live.auth("alice")).json()["agents"]
    assert {x["name"]: x["measurements_done"] for x in agents} == {"a": 1, "b": 0}


def _expire(live: Live, task_id: str) -> None:
    with live.store.engine.begin() as connection:
        connection.execute(update(MeasurementTaskRow).where(MeasurementTaskRow.id == task_id)
                           .values(lease_expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip


def test_an_expired_lease_goes_to_another_agent_and_the_first_report_is_refused(live: Live) -> None:
    a = live.register("alice-agent", "expiry-lab", "a")["id"]
    b = live.register("alice-agent", "expiry-lab", "b")["id"]
    task_id = live.queue("expiry-lab")
    first = live.lease("alice-agent", a).json()
    _expire(live, task_id)  # agent a went silent: SIGKILLed mid-measurement
    second = live.lease("alice-agent", b).json()
    assert second["id"] == task_id and second["lease_id"] != first["lease_id"]
    late = live.client.put(f"{AGENTS}/{a}/tasks/{task_id}/result", headers=live.auth("alice-agent"),
                           json={"lease_id": first["lease_id"], "stats": {"p10_ms": 1.0, "median_ms": 1.0}})
    assert late.status_code == 409
    beat = live.client.post(f"{AGENTS}/{a}/tasks/{task_id}/heartbeat", json={"lease_id": first["lease_id"]},
                            headers=live.auth("alice-agent"))  # fmt: skip
    assert beat.status_code == 409
    ok = live.client.put(f"{AGENTS}/{b}/tasks/{task_id}/result", headers=live.auth("alice-agent"),
                         json={"lease_id": second["lease_id"], "stats": {"p10_ms": 2.0, "median_ms": 2.0}})
    assert ok.status_code == 200
    task = live.store.measurements.task(task_id)
    assert task.attempts == 2 and task.result is not None and task.result["agent"] == "b"


def test_a_task_every_agent_abandons_fails_after_its_attempts(live: Live) -> None:
    a = live.register("alice-agent", "doomed-lab", "a")["id"]
    task_id = live.queue("doomed-lab")
    for _ in range(MAX_ATTEMPTS):
        assert live.lease("alice-agent", a).status_code == 200
        _expire(live, task_id)
    assert live.lease("alice-agent", a).status_code == 204
    task = live.store.measurements.task(task_id)
    assert task.state == "failed" and "no agent reported it" in (task.error or "")


def test_a_measurement_error_fails_the_task_with_the_agents_words(live: Live) -> None:
    a = live.register("alice-agent", "error-lab", "a")["id"]
    task_id = live.queue("error-lab")
    task = live.lease("alice-agent", a).json()
    both = {"lease_id": task["lease_id"], "error": "x", "stats": {"p10_ms": 1.0, "median_ms": 1.0}}
    assert live.client.put(f"{AGENTS}/{a}/tasks/{task_id}/result", json=both,
                           headers=live.auth("alice-agent")).status_code == 422  # fmt: skip
    failed = live.client.put(f"{AGENTS}/{a}/tasks/{task_id}/result", headers=live.auth("alice-agent"),
                             json={"lease_id": task["lease_id"], "error": "onnxruntime: invalid graph"})
    assert failed.status_code == 200 and failed.json()["state"] == "failed"
    assert live.store.measurements.task(task_id).error == "onnxruntime: invalid graph"


def _job(target: str, **extra: Any) -> dict[str, Any]:
    return {"search_space": {"name": "sparse_mlp"}, "dataset": {"name": "digits"}, "target": target,
            "budget": {"max_trials": 1}, **extra}  # fmt: skip


def test_a_job_names_an_agent_target_and_gets_a_runtime_its_agents_offer(live: Live) -> None:
    live.register("alice-agent", "job-lab", "a", [ORT])
    created = live.client.post(f"{API_PREFIX}/jobs", json=_job("job-lab"), headers=live.auth("alice"))
    assert created.status_code == 201, created.text
    spec = created.json()["spec"]
    assert spec["target"] == "job-lab" and spec["target_runtime"] == "onnxruntime"
    assert spec["budget"]["target_timeout_s"] == 600
    live.client.post(f"{API_PREFIX}/jobs/{created.json()['id']}/cancel", headers=live.auth("alice"))
    # bob has no such target: refused naming it, without revealing alice's
    refused = live.client.post(f"{API_PREFIX}/jobs", json=_job("job-lab"), headers=live.auth("bob"))
    assert refused.status_code == 422
    assert "unknown target 'job-lab'" in str(refused.json()["detail"]) and "no agent target yet" in str(refused.json()["detail"])
    unoffered = live.client.post(f"{API_PREFIX}/jobs", json=_job("job-lab", target_runtime="torch-cuda"),
                                 headers=live.auth("alice"))  # fmt: skip
    assert unoffered.status_code == 201  # an agent offering it may come later; the trial then waits
    live.client.post(f"{API_PREFIX}/jobs/{unoffered.json()['id']}/cancel", headers=live.auth("alice"))
    builtin = live.client.post(f"{API_PREFIX}/jobs", json=_job("cpu", target_runtime="onnxruntime"),
                               headers=live.auth("alice"))  # fmt: skip
    assert builtin.status_code == 422 and "agent targets" in str(builtin.json()["detail"])


def test_calibration_needs_an_online_agent_with_the_runtime(live: Live) -> None:
    live.register("alice-agent", "calib-lab", "a", [ORT])
    refused = live.client.post(f"{API_PREFIX}/targets/calib-lab/calibrations", json={"runtime": "torch"},
                               headers=live.auth("alice"))  # fmt: skip
    assert refused.status_code == 409 and "nas agent" in refused.json()["detail"]
    missing = live.client.post(f"{API_PREFIX}/targets/nowhere/calibrations", json={}, headers=live.auth("alice"))
    assert missing.status_code == 404

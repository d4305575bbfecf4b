"""Bounded work per request, per-owner quotas and clean edges, against a live ``nas serve``.

Each hostile request is refused with its limit named, and another owner's reads keep answering
while one owner hammers the server (the tests assert that they answer, never how fast).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sqlalchemy import text

from nas.settings import Settings
from nas.specs import JobSpec
from nas.store import Store, make_engine
from nas.store.artifacts import save_model
from tests.sdk_server import complete_trial, model_bytes
from benchmarks.server_process import ServerProcess

API = "/api/v1"
SPEC: dict[str, Any] = {
    "name": "limits",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "training": {"epochs": 1},
    "budget": {"max_trials": 1},
}
# The review's slow prediction (8 bidirectional LSTM layers, hidden 512, over 512 steps) on a batch
# of 64: a minute or more of one core, past the 30 s NAS_WORK_TIMEOUT_S.
BIG_LSTM: dict[str, Any] = {
    "layers": [{"type": "lstm", "hidden_size": 512, "num_layers": 8, "bidirectional": True}],
    "input_shape": [512, 256],
    "batch_size": 64,
}


def sparsities(n: int) -> list[float]:
    """``n`` distinct sparsities, about 2 kB of JSON per 100."""
    return [round(0.1 + i / 1000 + 0.000012345, 9) for i in range(n)]


CHOICES = sparsities(100)
ENV = {
    "NAS_LIMIT_PREDICT_RECURRENT_STEPS": "600000",  # BIG_LSTM fits (524,288); twice its batch does not
    "NAS_LIMIT_PREDICT_ELEMENTS": str(1 << 26),
    "NAS_WORK_PROCESSES": "1",
    "NAS_LIMIT_EXPENSIVE_REQUESTS": "1",
    "NAS_LIMIT_EVENT_STREAMS": "2",
    "NAS_LIMIT_JOBS_PER_HOUR": "3",
    "NAS_LIMIT_SPEC_BYTES": "3000",
    "NAS_LIMIT_OWNER_SPEC_BYTES": "3500",  # three small specs, or one of CHOICES and a small one
    "NAS_LIMIT_ACTIVE_JOBS": "100",
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Live:
    """The server, a key per owner, and a job of bob's whose reads must keep answering."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.url = process.url + API
        self.keys = {owner: process.create_key(owner) for owner in ("alice", "bob", "carol", "dave", "erin")}
        self.store = Store(make_engine(Settings(home=process.home).database_url))
        self.bob_job = ""

    def post(self, owner: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, headers=bearer(self.keys[owner]), timeout=120, **kwargs)

    def get(self, owner: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=bearer(self.keys[owner]), timeout=120, **kwargs)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("limits")
    process = ServerProcess(home, {"NAS_DATA_DIR": str(home), **ENV})
    server = Live(process)
    process.start("--max-jobs", "0", "--log-format", "text")  # no dispatcher: jobs stay queued
    try:
        created = server.post("bob", "/jobs", json=SPEC)
        assert created.status_code == 201, created.text
        server.bob_job = created.json()["id"]
        yield server
    finally:
        process.stop()


def during(attack: Callable[[], list[httpx.Response]], live: Live, threads: int = 4) -> list[httpx.Response]:
    """Run ``attack`` in ``threads`` threads while bob reads his job; every read must answer 200."""
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def run() -> None:
        got = attack()
        with lock:
            answers.extend(got)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    reads = []
    while any(worker.is_alive() for worker in workers) or not reads:
        reads.append(live.get("bob", f"/jobs/{live.bob_job}").status_code)
        time.sleep(0.05)
    for worker in workers:
        worker.join()
    assert reads and set(reads) == {200}, reads
    return answers


def detail_text(response: httpx.Response) -> str:
    return json.dumps(response.json()["detail"])


# -- bounded work per request --------------------------------------------------------------------


def test_onnx_exports_run_in_workers_while_other_owners_read(live: Live) -> None:
    trials = []
    for seed in range(2):  # two of bob's trials, each with a stored model and no ONNX yet
        trial = complete_trial(live.store, live.bob_job, accuracy=0.5)
        data = model_bytes(seed=seed)
        artifact = save_model(Settings(home=live.process.home).artifact_dir, trial.job_id, trial.id, data)
        live.store.add_artifact(artifact)
        trials.append(trial.id)

    def attack() -> list[httpx.Response]:
        return [live.get("bob", f"/trials/{trial_id}/model", params={"format": "onnx"}) for trial_id in trials]

    answers = during(attack, live, threads=2)  # bob's two exports at once: one runs, the other may be refused
    assert {a.status_code for a in answers} <= {200, 429}, [a.text[:200] for a in answers if a.status_code != 200]
    assert any(a.status_code == 200 and a.content.startswith(b"\x08") for a in answers)  # ONNX: ir_version first
    for trial_id in trials:  # each is exported once and then served from the artifact store
        assert live.get("bob", f"/trials/{trial_id}/model", params={"format": "onnx"}).status_code == 200


def test_a_prediction_over_the_element_or_step_budget_is_refused_naming_it(live: Live) -> None:
    steps = live.post("alice", "/latency/predict", json={**BIG_LSTM, "batch_size": 128})
    assert steps.status_code == 422, steps.text
    assert "NAS_LIMIT_PREDICT_RECURRENT_STEPS" in detail_text(steps) and "1048576" in detail_text(steps)
    wide = {"layers": [{"type": "linear", "out_features": 16}], "input_shape": [512, 256], "batch_size": 4096}
    elements = live.post("alice", "/latency/predict", json=wide)
    assert elements.status_code == 422, elements.text
    assert "NAS_LIMIT_PREDICT_ELEMENTS" in detail_text(elements)


def test_predictions_run_in_a_worker_with_a_time_limit_and_a_per_owner_quota(live: Live) -> None:
    def attack() -> list[httpx.Response]:
        return [live.post("alice", "/latency/predict", json=BIG_LSTM)]

    answers = during(attack, live)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {429, 503}, [a.text for a in answers]
    busy = [a for a in answers if a.status_code == 429]
    assert busy and all(a.headers["Retry-After"].isdigit() for a in busy)
    assert all("NAS_LIMIT_EXPENSIVE_REQUESTS" in detail_text(a) for a in busy)
    timed_out = [a for a in answers if a.status_code == 503]
    assert timed_out and all("NAS_WORK_TIMEOUT_S" in detail_text(a) for a in timed_out)
    # the killed worker is replaced: the next prediction is served
    small = live.post("bob", "/latency/predict", json={"layers": [{"type": "linear", "out_features": 8}],
                                                        "input_shape": [16]})  # fmt: skip
    assert small.status_code == 200, small.text


def test_yaml_over_its_depth_or_size_is_refused_naming_the_limit(live: Live) -> None:
    def attack() -> list[httpx.Response]:
        return [live.post("alice", "/specs/parse", json={"yaml": "a: " + "[" * 60_000}) for _ in range(3)]

    answers = during(attack, live)
    assert {a.status_code for a in answers} == {422}
    assert all("depth" in detail_text(a) for a in answers)
    nested = live.post("alice", "/specs/parse", json={"yaml": "a: " + "[" * 40 + "]" * 40})
    assert nested.status_code == 422 and "NAS_LIMIT_YAML_DEPTH" in detail_text(nested)
    large = live.post("alice", "/specs/parse", json={"yaml": "name: " + "x" * 70_000})
    assert large.status_code == 413 and "NAS_LIMIT_YAML_BYTES" in detail_text(large)
    assert live.post("alice", "/specs/parse", json={"yaml": "name: ok\nbudget: {max_trials: 2}"}).json() == {
        "spec": {"name": "ok", "budget": {"max_trials": 2}}
    }


def test_every_list_in_a_spec_and_the_spec_itself_are_bounded(live: Live) -> None:
    choices = {"search_space": {"name": "sparse_mlp", "params": {"layer_sparsity_choices": [0.5] * 1000}}}
    long_list = live.post("alice", "/jobs", json={**SPEC, **choices})
    assert long_list.status_code == 422 and "at most 256" in detail_text(long_list)
    bulky = {"search_space": {"name": "sparse_mlp", "params": {"layer_sparsity_choices": sparsities(250)}}}
    big = live.post("alice", "/jobs", json={**SPEC, **bulky})
    assert big.status_code == 422 and "NAS_LIMIT_SPEC_BYTES" in detail_text(big)


def test_the_pareto_front_is_cached_until_a_trial_changes(live: Live) -> None:
    job = live.post("dave", "/jobs", json={**SPEC, "objectives": [
        {"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]}).json()
    slow = complete_trial(live.store, job["id"], accuracy=0.9, latency_ms=5.0)
    assert [t["id"] for t in live.get("dave", f"/jobs/{job['id']}/pareto").json()["items"]] == [slow.id]
    assert [t["id"] for t in live.get("dave", f"/jobs/{job['id']}/pareto").json()["items"]] == [slow.id]
    better = complete_trial(live.store, job["id"], accuracy=0.95, latency_ms=1.0)  # dominates: the front changes
    assert [t["id"] for t in live.get("dave", f"/jobs/{job['id']}/pareto").json()["items"]] == [better.id]


# -- per-owner quotas ------------------------------------------------------------------------------


def test_jobs_per_hour_are_a_quota_with_retry_after(live: Live) -> None:
    for _ in range(3):
        assert live.post("carol", "/jobs", json=SPEC).status_code == 201
    refused = live.post("carol", "/jobs", json=SPEC)
    assert refused.status_code == 429 and "NAS_LIMIT_JOBS_PER_HOUR" in refused.json()["detail"]
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert live.post("dave", "/jobs", json=SPEC).status_code == 201  # another owner is not affected


def test_stored_spec_bytes_are_a_quota_per_owner(live: Live) -> None:
    bulky = {"search_space": {"name": "sparse_mlp", "params": {"layer_sparsity_choices": CHOICES}}}
    assert live.post("erin", "/jobs", json={**SPEC, **bulky}).status_code == 201  # about 2 kB
    refused = live.post("erin", "/jobs", json={**SPEC, **bulky})
    assert refused.status_code == 429 and "NAS_LIMIT_OWNER_SPEC_BYTES" in refused.json()["detail"]
    assert refused.headers["Retry-After"].isdigit()
    assert live.post("erin", "/jobs", json=SPEC).status_code == 201  # a small one still fits


def test_lists_and_streams_leave_specs_out(live: Live) -> None:
    listed = live.get("bob", "/jobs").json()["items"]
    assert listed and all("spec" not in job for job in listed)
    assert listed[0]["outline"]["search_space"] == "sparse_mlp" and listed[0]["outline"]["max_trials"] == 1
    assert "spec" not in live.get("bob", "/dashboard/jobs").json()["items"][0]
    assert live.get("bob", f"/jobs/{live.bob_job}").json()["spec"]["name"] == "limits"
    with httpx.stream("GET", f"{live.url}/events", headers=bearer(live.keys["bob"]), timeout=30) as stream:
        event = next(line for line in stream.iter_lines() if line.startswith("data:"))
    assert json.loads(event.removeprefix("data:"))["id"] == live.bob_job and "spec" not in event


def test_open_event_streams_are_a_quota_per_owner(live: Live) -> None:
    url = f"{live.url}/events"
    with httpx.Client(timeout=30, headers=bearer(live.keys["alice"])) as client:
        with client.stream("GET", url) as first, client.stream("GET", url) as second:
            assert first.status_code == second.status_code == 200
            third = client.get(url)
            assert third.status_code == 429 and "NAS_LIMIT_EVENT_STREAMS" in third.json()["detail"]
            assert third.headers["Retry-After"].isdigit()
            assert _open_and_close(httpx.Client(timeout=30, headers=bearer(live.keys["bob"])), url) == 200
        deadline = time.monotonic() + 10  # closed streams give their places back
        while (status := _open_and_close(client, url)) == 429:
            assert time.monotonic() < deadline, "closed streams were never counted out"
            time.sleep(0.2)
        assert status == 200


def _open_and_close(client: httpx.Client, url: str) -> int:
    with client.stream("GET", url) as response:
        return response.status_code


# -- clean edges -----------------------------------------------------------------------------------


def test_another_owners_trial_answers_like_an_unknown_one(live: Live) -> None:
    trial = live.store.create_trial(live.bob_job, {"depth": 1})
    for path in (f"/trials/{trial.id}", f"/trials/{trial.id}/model", f"/trials/{trial.id}/lineage"):
        theirs, unknown = live.get("alice", path), live.get("alice", path.replace(trial.id, "0" * 32))
        assert theirs.status_code == unknown.status_code == 404
        assert live.bob_job not in theirs.text
        assert theirs.json()["detail"] == unknown.json()["detail"].replace("0" * 32, trial.id)


def test_control_characters_are_refused_in_names_and_never_replayed(live: Live) -> None:
    for name in ("red \x1b[31m", "nul \x00", "bidi \u202egnp.exe", "line\nbreak"):
        refused = live.post("alice", "/jobs", json={**SPEC, "name": name})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "name"]
    # a name stored before the rule, straight into the database, is escaped on the way out
    job = live.store.create_job(JobSpec.model_validate({**SPEC, "name": "old"}), "alice")
    with live.store.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET name = :name WHERE id = :id"), {"name": "\x1b]0;pwned\x07\x1b[2J", "id": job.id})
    listed = live.process.cli("jobs", api_key=live.keys["alice"])
    assert listed.returncode == 0, listed.stderr
    assert "pwned" in listed.stdout and "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    refused_owner = live.process.cli("keys", "create", "eve\x1b[2J")  # key owners are names too
    assert refused_owner.returncode == 2 and "control" in refused_owner.stderr


def test_text_logs_escape_control_characters(live: Live) -> None:
    live.get("alice", "/jobs/x%0A2026-01-01 00:00:00,000 INFO nas.access: forged%1B[31m")
    deadline = time.monotonic() + 10  # the access line is written once the answer has gone
    while "forged" not in (log := live.process.log()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "\nforged" not in log and "\n2026-01-01 00:00:00,000 INFO nas.access: forged" not in log
    assert "\x1b[31m" not in log
    assert re.search(r"x\\n2026-01-01 00:00:00,000 INFO nas\.access: forged\\x1b\[31m", log), [
        line for line in log.splitlines() if "forged" in line
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/jobs?cursor=" + "9" * 30, None),
        ("GET", f"/jobs?cursor={'OTk5' * 10}", None),
        ("GET", "/events?token=" + "1" * 27 + ".1.abc", None),
        ("POST", "/jobs", b'{"name":"x","search_space":{"name":"sparse_mlp"},"dataset":{"name":"digits"},"training":{"epochs":1e400}}'),
        ("POST", "/jobs", b'{"name":"x","search_space":{"name":"sparse_mlp"},"dataset":{"name":"digits"},"training":{"lr":NaN}}'),
        ("POST", "/jobs", b'{"name":"x","search_space":{"name":"sparse_mlp"},"dataset":{"name":"digits"},"seed":' + b"9" * 5000 + b"}"),
        ("POST", "/jobs", b'{"name":"\\ud800","search_space":{"name":"sparse_mlp"},"dataset":{"name":"digits"}}'),
        ("POST", "/jobs", b'{"name":"x","search_space":{"name":"sparse_mlp"},"dataset":{"name":"digits"},"budget":{"trial_stall_s":1e300}}'),
        ("POST", "/specs/parse", json.dumps({"yaml": "seed: " + "9" * 5000}).encode()),
        ("POST", "/specs/parse", json.dumps({"yaml": "lr: .nan"}).encode()),
        ("POST", "/latency/predict", b'{"layers":[{"type":"linear","out_features":1e400}],"input_shape":[4]}'),
    ],
)
def test_big_numbers_nan_and_odd_text_are_refused_not_500(live: Live, method: str, path: str, body: bytes | None) -> None:
    headers = {**bearer(live.keys["alice"]), "Content-Type": "application/json"}
    response = httpx.request(method, live.url + path, content=body, headers=headers, timeout=60)
    assert response.status_code in (401, 422), response.text
    assert "detail" in response.json()


def test_swagger_ui_is_off_by_default(live: Live) -> None:
    assert httpx.get(f"{live.url}/docs").status_code == 404
    assert httpx.get(f"{live.url}/openapi.json").status_code == 200

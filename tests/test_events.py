"""Server-sent events: the real app under uvicorn, a real store, and a streaming HTTP client.

The runner's writes are made through the store, as a runner would make them; the streams must
carry every change, resume from ``Last-Event-ID``, close when the job ends, and hide other
owners' jobs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.routes import events
from nas.settings import Settings
from nas.signing import ServerSecret
from nas.specs import JobStatus, LayerInfo, TrialState
from nas.store import Store
from benchmarks.server_process import free_port


@pytest.fixture
def server(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app under uvicorn in a thread; streams poll every 0.1 s so the tests stay short."""
    import uvicorn

    monkeypatch.setattr(events, "POLL_S", 0.1)
    monkeypatch.setattr(events, "JOBS_POLL_S", 0.1)
    monkeypatch.setattr(events, "RECHECK_KEY_S", 0.3)
    app = create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False,
        timeout_graceful_shutdown=1,  # open event streams never end by themselves
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    uv.should_exit = True
    thread.join(10)


@dataclass
class Stream:
    """An event stream read by a background thread into a queue of (event, data, id)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    events: queue.Queue[tuple[str, Any, str | None]] = field(default_factory=queue.Queue)
    status: int | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        threading.Thread(target=self._read, daemon=True).start()
        assert self.opened.wait(10), "the stream did not answer"
        return self

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, params=self.params, timeout=httpx.Timeout(30, read=30)) as response:
                self.status = response.status_code
                self.opened.set()
                if response.status_code != 200:
                    response.read()
                    self.body = response.text
                    return
                assert response.headers["content-type"].startswith("text/event-stream")
                event, data, event_id = "message", [], None
                for line in response.iter_lines():
                    if line == "":
                        if data:
                            self.events.put((event, json.loads("\n".join(data)), event_id))
                        event, data = "message", []
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data.append(line[6:])
                    elif line.startswith("id: "):
                        event_id = line[4:]
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()
            self.closed.set()

    def next(self, kind: str | None = None, timeout: float = 10, where: Any = None) -> tuple[str, Any, str | None]:
        """The next event (of ``kind``, matching ``where``); others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind or ''} event within {timeout} s")
            try:
                item = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if (kind is None or item[0] == kind) and (where is None or where(item[1])):
                return item


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def alice(store: Store, make_spec: Any) -> dict[str, str]:
    key = store.create_api_key("alice")
    job = store.create_job(make_spec(), "alice")
    return {"key": key, "job": job.id}


def test_a_job_stream_carries_trials_epochs_and_the_job_then_ends(server: str, store: Store, alice: dict[str, str]) -> None:
    stream = Stream(f"{server}/api/v1/jobs/{alice['job']}/events", bearer(alice["key"])).start()
    assert stream.status == 200
    _, job, _ = stream.next("job")
    assert job["id"] == alice["job"] and job["status"] == "queued" and job["n_trials"] == 0

    store.claim_job("runner-1", 60)
    assert stream.next("job", where=lambda j: j["status"] == "running")
    trial = store.create_trial(alice["job"], {"depth": 1})
    _, row, event_id = stream.next("trial")
    assert row["id"] == trial.id and row["state"] == "queued" and row["number"] == 0 and event_id
    store.start_trial(trial.id, attempt=1)
    assert stream.next("trial", where=lambda t: t["state"] == "running")
    store.report_epoch(trial.id, 1, {"accuracy": 0.5, "loss": 1.2})
    _, epoch, _ = stream.next("epoch")
    assert epoch == {"id": epoch["id"], "trial_id": trial.id, "epoch": 1, "metrics": {"accuracy": 0.5, "loss": 1.2}}
    layers = [LayerInfo(name="fc0.weight", shape=[4, 4], density=0.25, pattern="unstructured")]
    store.finish_trial(trial.id, TrialState.complete, {"accuracy": 0.9, "sparsity": 0.75}, layers)
    _, done, _ = stream.next("trial", where=lambda t: t["state"] == "complete")
    assert done["metrics"] == {"accuracy": 0.9, "sparsity": 0.75}
    store.set_best_trial(alice["job"], trial.id)
    _, job, _ = stream.next("job", where=lambda j: j["best_trial_id"] == trial.id)
    assert job["best_trial"]["metrics"]["accuracy"] == 0.9 and job["n_complete"] == 1

    store.finish_job(alice["job"], JobStatus.succeeded)
    assert stream.next("job", where=lambda j: j["status"] == "succeeded")
    _, end, _ = stream.next("end")
    assert end == {"status": "succeeded"}
    assert stream.closed.wait(5), "the stream of a finished job closes"


def test_a_job_stream_opens_by_a_unique_id_prefix(server: str, store: Store, alice: dict[str, str]) -> None:
    stream = Stream(f"{server}/api/v1/jobs/{alice['job'][:8]}/events", bearer(alice["key"])).start()
    assert stream.status == 200
    trial = store.create_trial(alice["job"], {"depth": 1})
    _, row, _ = stream.next("trial")
    assert row["id"] == trial.id and row["arch"] == {"depth": 1}


def test_each_change_is_sent_once(server: str, store: Store, alice: dict[str, str]) -> None:
    stream = Stream(f"{server}/api/v1/jobs/{alice['job']}/events", bearer(alice["key"])).start()
    trials = [store.create_trial(alice["job"], {"depth": 1}) for _ in range(3)]
    seen = [stream.next("trial")[1]["id"] for _ in trials]
    assert seen == [t.id for t in trials]
    time.sleep(1)  # several polls, all inside the overlap window
    assert [e for e in list(stream.events.queue) if e[0] == "trial"] == []


def test_a_token_opens_a_stream_without_a_header(server: str, store: Store, alice: dict[str, str]) -> None:
    response = httpx.post(f"{server}/api/v1/events/token", headers=bearer(alice["key"]))
    assert response.status_code == 200
    token = response.json()["token"]
    assert alice["key"] not in token and response.json()["expires_in_s"] == events.TOKEN_TTL_S
    stream = Stream(f"{server}/api/v1/jobs/{alice['job']}/events", params={"token": token}).start()
    assert stream.status == 200 and stream.next("job")[1]["id"] == alice["job"]
    jobs = Stream(f"{server}/api/v1/events", params={"token": token}).start()
    assert jobs.status == 200 and jobs.next("job")[1]["id"] == alice["job"]


@pytest.mark.parametrize("mangle", ["signature", "expired", "unknown key", "other owner", "key hash", "old scheme", "garbage"])
def test_a_bad_or_expired_token_is_refused(
    server: str, store: Store, alice: dict[str, str], tmp_path: Path, mangle: str
) -> None:
    token = httpx.post(f"{server}/api/v1/events/token", headers=bearer(alice["key"])).json()["token"]
    payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    secret = ServerSecret(tmp_path / "home" / "server-secret")  # the server's own secret
    if mangle == "signature":
        token = f"{payload}.{signature[:-2]}AA"
    elif mangle == "expired":
        token = secret.sign(events.TOKEN_PURPOSE, {**claims, "exp": int(time.time()) - 1})
    elif mangle == "unknown key":
        token = secret.sign(events.TOKEN_PURPOSE, {**claims, "k": 99999})
    elif mangle == "other owner":
        token = secret.sign(events.TOKEN_PURPOSE, {**claims, "o": "bob"})
    elif mangle == "key hash":
        # all a copy of the database holds: a token signed with the key's stored hash
        forged_secret = tmp_path / "forged-secret"
        forged_secret.write_text(hashlib.sha256(alice["key"].encode()).hexdigest())
        token = ServerSecret(forged_secret).sign(events.TOKEN_PURPOSE, claims)
    elif mangle == "old scheme":
        # the format once signed with the key's stored hash: "key id.expiry.HMAC(hash)"
        key_hash = hashlib.sha256(alice["key"].encode()).hexdigest()
        expires = int(time.time()) + 300
        digest = hmac.new(key_hash.encode(), f"nas-events:{claims['k']}:{expires}".encode(), hashlib.sha256).digest()
        token = f"{claims['k']}.{expires}.{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"
    else:
        token = "1.2.3"
    response = httpx.get(f"{server}/api/v1/jobs/{alice['job']}/events", params={"token": token})
    if mangle in ("old scheme", "garbage"):  # not even shaped like a token
        assert response.status_code == 422, response.text
    else:
        assert response.status_code == 401, response.text
        assert "token" in response.json()["detail"]


def test_a_token_for_one_job_opens_only_that_job(server: str, store: Store, alice: dict[str, str], make_spec: Any) -> None:
    other = store.create_job(make_spec(name="other"), "alice")
    url = f"{server}/api/v1/events/token"
    token = httpx.post(url, params={"job_id": alice["job"]}, headers=bearer(alice["key"])).json()["token"]
    assert Stream(f"{server}/api/v1/jobs/{alice['job']}/events", params={"token": token}).start().status == 200
    assert httpx.get(f"{server}/api/v1/jobs/{other.id}/events", params={"token": token}).status_code == 401
    assert httpx.get(f"{server}/api/v1/events", params={"token": token}).status_code == 401
    bob = store.create_api_key("bob")
    assert httpx.post(url, params={"job_id": alice["job"]}, headers=bearer(bob)).status_code == 404


def test_rotating_the_secret_voids_outstanding_tokens(server: str, alice: dict[str, str], tmp_path: Path) -> None:
    get_token = lambda: httpx.post(f"{server}/api/v1/events/token", headers=bearer(alice["key"])).json()["token"]
    old = get_token()
    stream_url = f"{server}/api/v1/jobs/{alice['job']}/events"
    assert Stream(stream_url, params={"token": old}).start().status == 200
    secret_file = tmp_path / "home" / "server-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    ServerSecret(secret_file).rotate()  # what `nas keys rotate-secret` does
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert httpx.get(stream_url, params={"token": old}).status_code == 401
    assert Stream(stream_url, params={"token": get_token()}).start().status == 200


def test_another_owners_job_is_404_with_a_key_or_a_token(server: str, store: Store, alice: dict[str, str]) -> None:
    bob = store.create_api_key("bob")
    assert httpx.get(f"{server}/api/v1/jobs/{alice['job']}/events", headers=bearer(bob)).status_code == 404
    token = httpx.post(f"{server}/api/v1/events/token", headers=bearer(bob)).json()["token"]
    assert httpx.get(f"{server}/api/v1/jobs/{alice['job']}/events", params={"token": token}).status_code == 404
    assert httpx.get(f"{server}/api/v1/jobs/unknown/events", headers=bearer(alice["key"])).status_code == 404
    assert httpx.get(f"{server}/api/v1/jobs/{alice['job']}/events").status_code == 401
    # bob's stream of his own jobs does not carry alice's
    jobs = Stream(f"{server}/api/v1/events", params={"token": token}).start()
    time.sleep(0.5)
    assert [e for e in list(jobs.events.queue) if e[0] == "job"] == []


def test_a_revoked_key_ends_its_open_streams(server: str, store: Store, alice: dict[str, str]) -> None:
    token = httpx.post(f"{server}/api/v1/events/token", headers=bearer(alice["key"])).json()["token"]
    stream = Stream(f"{server}/api/v1/jobs/{alice['job']}/events", params={"token": token}).start()
    stream.next("job")
    store.revoke_api_keys(owner="alice")
    _, denied, _ = stream.next("denied", timeout=5)
    assert denied["status"] == 401
    assert stream.closed.wait(5)
    assert httpx.get(f"{server}/api/v1/jobs/{alice['job']}/events", params={"token": token}).status_code == 401


def test_a_reconnection_resumes_after_the_last_event(server: str, store: Store, alice: dict[str, str]) -> None:
    stream = Stream(f"{server}/api/v1/jobs/{alice['job']}/events", bearer(alice["key"])).start()
    first = store.create_trial(alice["job"], {"depth": 1})
    _, _, last_id = stream.next("trial", where=lambda t: t["id"] == first.id)
    store.start_trial(first.id, attempt=1)
    store.report_epoch(first.id, 1, {"accuracy": 0.4})
    stream.next("trial", where=lambda t: t["state"] == "running")  # a batch sends trials, then epochs
    _, _, last_id = stream.next("epoch")
    time.sleep(0.3)
    # the client is away: a new trial and an epoch arrive
    second = store.create_trial(alice["job"], {"depth": 2})
    store.report_epoch(first.id, 2, {"accuracy": 0.6})
    resumed = Stream(f"{server}/api/v1/jobs/{alice['job']}/events", {**bearer(alice["key"]), "Last-Event-ID": str(last_id)}).start()
    assert resumed.next("trial", where=lambda t: t["id"] == second.id)
    _, epoch, _ = resumed.next("epoch")
    assert epoch["epoch"] == 2  # epoch 1 was sent before the resume point


def test_the_jobs_stream_reports_new_and_changed_jobs(server: str, store: Store, alice: dict[str, str], make_spec: Any) -> None:
    stream = Stream(f"{server}/api/v1/events", bearer(alice["key"])).start()
    assert stream.next("job")[1]["id"] == alice["job"]
    second = store.create_job(make_spec(name="second"), "alice")
    _, job, _ = stream.next("job", where=lambda j: j["id"] == second.id)
    assert job["name"] == "second" and job["status"] == "queued"
    store.request_cancel(second.id)
    assert stream.next("job", where=lambda j: j["id"] == second.id and j["status"] == "cancelled")

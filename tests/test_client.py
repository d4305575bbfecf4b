"""The synchronous SDK against the real API served by uvicorn on a localhost port."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from rich.console import Console

from nas.client import (
    ApiError,
    AuthenticationError,
    Client,
    ConflictError,
    ConnectionFailed,
    Event,
    FieldError,
    JobPage,
    NasError,
    NotFoundError,
    PayloadTooLarge,
    ServerError,
    SpecError,
    TrialPage,
    ValidationError,
    WaitTimeout,
)
from nas.client.progress import JobProgress
from nas.specs import Job, JobOutline, JobSpec, JobStatus, LayerInfo, Trial, TrialState
from tests.sdk_server import SPEC, Server, complete_trial, model_bytes, store_model

# the fixtures `server`, `owner` and `key`


@pytest.fixture
def client(server: Server, key: str) -> Iterator[Client]:
    with Client(url=server.url, api_key=key, backoff=0.01) as c:
        yield c


# -- jobs and trials ---------------------------------------------------------------------------


def test_submit_dict_spec_object_and_yaml_file(client: Client, server: Server, owner: str, tmp_path: Path) -> None:
    job = client.submit(SPEC)
    assert isinstance(job, Job)
    assert job.status is JobStatus.queued and job.name == "client-test" and job.owner == owner
    assert job.spec["training"]["epochs"] == 3  # defaults filled by the server
    assert server.store.get_job(job.id).owner == owner

    from_model = client.submit(JobSpec.model_validate({**SPEC, "name": "from-model"}))
    assert from_model.name == "from-model"

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "name": "from-yaml", "training": {"epochs": 2}}))
    from_yaml = client.submit(path)
    assert from_yaml.name == "from-yaml" and from_yaml.spec["training"]["epochs"] == 2
    as_str = client.submit(str(path))
    assert as_str.name == "from-yaml" and as_str.id != from_yaml.id

    json_path = tmp_path / "spec.json"
    json_path.write_text(json.dumps({**SPEC, "name": "from-json"}))
    assert client.submit(json_path).name == "from-json"

    assert client.job(job.id) == job

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        client.submit(broken)
    with pytest.raises(TypeError):
        client.submit(42)  # type: ignore[arg-type]


def test_jobs_iterates_every_page(client: Client, server: Server) -> None:
    ids = [client.submit({**SPEC, "name": f"job-{i}"}).id for i in range(5)]
    other = server.store.create_api_key("someone-else")
    with Client(url=server.url, api_key=other) as stranger:
        stranger.submit(SPEC)
    listed = list(client.jobs(page_size=2))
    assert [j.id for j in listed] == list(reversed(ids))
    client.cancel(ids[0])
    assert [j.id for j in client.jobs(status="cancelled", page_size=1)] == [ids[0]]
    assert [j.id for j in client.jobs(status=JobStatus.queued, page_size=3)] == list(reversed(ids[1:]))

    page = client.job_page(limit=2)
    assert isinstance(page, JobPage) and [j.id for j in page.items] == ids[:2:-1] and page.next_cursor
    rest = client.job_page(limit=10, cursor=page.next_cursor)
    assert [j.id for j in rest.items] == ids[2::-1] and rest.next_cursor is None


def test_trials_iterates_every_page(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    created = [server.store.create_trial(job.id, {"i": i}) for i in range(11)]
    for trial in created[::3]:
        server.store.start_trial(trial.id)
    trials = list(client.trials(job.id, page_size=4))  # 3 pages
    assert [t.number for t in trials] == list(range(11))
    assert [t.id for t in trials] == [t.id for t in created]
    assert all(isinstance(t, Trial) and t.job_id == job.id for t in trials)
    running = list(client.trials(job.id, state=TrialState.running, page_size=2))
    assert [t.number for t in running] == [0, 3, 6, 9]
    assert [t.number for t in client.trials(job.id, state="queued", page_size=100)][:3] == [1, 2, 4]
    assert len(list(client.trials(job.id))) == 11  # the default page size

    first = client.trial_page(job.id, limit=5)
    assert isinstance(first, TrialPage) and [t.number for t in first.items] == [0, 1, 2, 3, 4]
    second = client.trial_page(job.id, limit=5, cursor=first.next_cursor)
    assert [t.number for t in second.items] == [5, 6, 7, 8, 9]


def test_trial_detail(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    trial = server.store.create_trial(job.id, {"depth": 1})
    server.store.start_trial(trial.id)
    server.store.report_epoch(trial.id, 0, {"accuracy": 0.5})
    server.store.report_epoch(trial.id, 1, {"accuracy": 0.7})
    layer = LayerInfo(name="fc", shape=[10, 64], density=0.2, pattern="unstructured")
    server.store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": 0.7}, layers=[layer])
    got = client.trial(trial.id)
    assert [h.epoch for h in got.history] == [0, 1]
    assert got.layers == [layer]
    assert got.metrics == {"accuracy": 0.7}


def test_pareto(client: Client, server: Server) -> None:
    objectives = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "nonzero_params", "direction": "minimize"}]
    job = client.submit({**SPEC, "objectives": objectives})
    small = complete_trial(server.store, job.id, accuracy=0.8, nonzero_params=100)
    big = complete_trial(server.store, job.id, accuracy=0.95, nonzero_params=5000)
    complete_trial(server.store, job.id, accuracy=0.75, nonzero_params=200)  # dominated by small
    front = client.pareto(job.id)
    assert sorted(t.id for t in front) == sorted([small.id, big.id])
    assert all(isinstance(t, Trial) for t in front)


def test_cancel_and_conflict(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    cancelled = client.cancel(job.id)
    assert cancelled.status is JobStatus.cancelled
    with pytest.raises(ConflictError) as info:
        client.cancel(job.id)
    assert info.value.status == 409 and "cancelled" in str(info.value.detail)
    assert client.wait(job.id, progress=False).status is JobStatus.cancelled  # already finished


# -- wait ----------------------------------------------------------------------------------------


def test_wait_reports_progress_and_times_out(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    seen: list[Job] = []
    with pytest.raises(TimeoutError) as info:
        client.wait(job.id, progress=seen.append, poll_s=0.01, timeout=0.05)
    assert isinstance(info.value, WaitTimeout) and isinstance(info.value, NasError)
    assert seen and all(j.id == job.id and j.status is JobStatus.queued for j in seen)


def test_wait_follows_a_job_to_its_end(client: Client, server: Server) -> None:
    """The store moves the job on (as the dispatcher would) while ``wait`` polls it."""
    job = client.submit({**SPEC, "budget": {"max_trials": 2}})
    store = server.store
    seen: list[tuple[JobStatus, int]] = []

    def step(current: Job) -> None:
        seen.append((current.status, current.n_finished))
        if len(seen) == 1:
            while (claimed := store.claim_job("test-runner", 60)) != job.id:  # older queued jobs go first
                assert claimed is not None
        elif len(seen) == 2:
            best = complete_trial(store, job.id, accuracy=0.9)
            store.set_best_trial(job.id, best.id)
        elif len(seen) == 3:
            complete_trial(store, job.id, accuracy=0.8)
            store.finish_job(job.id, JobStatus.succeeded)

    done = client.wait(job.id, progress=step, poll_s=0.01, timeout=60)
    assert done.status is JobStatus.succeeded and done.n_finished == 2
    assert seen == [(JobStatus.queued, 0), (JobStatus.running, 0), (JobStatus.running, 1), (JobStatus.succeeded, 2)]


def test_progress_bar_shows_trials_status_and_best(server: Server) -> None:
    spec = JobSpec.model_validate({**SPEC, "budget": {"max_trials": 4}}).model_dump(mode="json")
    job = Job(id="j" * 32, name="lenet", owner="o", status=JobStatus.running, created_at="2026-11-28T00:00:00Z",
              outline=JobOutline.of(spec), spec=spec, n_trials=3, n_finished=3)
    best = Trial(id="t" * 32, job_id=job.id, number=1, state=TrialState.complete, arch={}, metrics={"accuracy": 0.93125},
                 created_at="2026-11-28T00:00:00Z")
    out = io.StringIO()
    with JobProgress(Console(file=out, force_terminal=True, width=120)) as display:
        display.update(job, best)
    text = out.getvalue()
    assert "lenet [running]" in text and "3/4" in text and "best accuracy 0.9313" in text


# -- errors --------------------------------------------------------------------------------------


def test_error_hierarchy(client: Client, server: Server, owner: str) -> None:
    for error in (AuthenticationError, NotFoundError, ConflictError, ValidationError, PayloadTooLarge, ServerError):
        assert issubclass(error, ApiError) and issubclass(error, NasError)
    assert SpecError is ValidationError
    assert issubclass(ConnectionFailed, NasError)

    with Client(url=server.url, api_key="nas_wrong") as bad:
        with pytest.raises(AuthenticationError) as info:
            bad.submit(SPEC)
        assert info.value.status == 401 and "invalid" in str(info.value)
        assert info.value.request_id  # every answer names its request
    with Client(url=server.url, api_key="") as anonymous:
        anonymous._http.headers.pop("Authorization", None)  # NAS_API_KEY could be set around the tests
        with pytest.raises(AuthenticationError, match="missing API key"):
            list(anonymous.jobs())

    with pytest.raises(NotFoundError) as not_found:
        client.job("0" * 32)
    assert not_found.value.status == 404
    other = server.store.create_job(JobSpec.model_validate(SPEC), owner + "-other")
    for call in (lambda: client.job(other.id), lambda: client.cancel(other.id), lambda: list(client.trials(other.id)),
                 lambda: client.pareto(other.id)):
        with pytest.raises(NotFoundError):
            call()


def test_validation_error_names_each_field(client: Client) -> None:
    with pytest.raises(ValidationError) as info:
        client.submit({**SPEC, "training": {"epochs": 0}, "search_space": {"name": "nowhere"}})
    errors = info.value.errors
    assert all(isinstance(e, FieldError) for e in errors)
    fields = dict(errors)
    assert set(fields) == {"training.epochs", "search_space.name"}
    assert "sparse_mlp" in fields["search_space.name"]
    assert info.value.status == 422
    assert "training.epochs" in str(info.value)

    with pytest.raises(ValidationError) as query:
        client.trial_page(client.submit(SPEC).id, limit=0)
    assert [e.path for e in query.value.errors] == ["limit"]


def test_payload_too_large(client: Client, server: Server) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        client.submit({**SPEC, "name": "x" * (server.settings.max_body_bytes + 1)})
    assert info.value.status == 413 and "larger than" in str(info.value)


def test_server_error_quotes_the_request_id(client: Client, server: Server, tmp_path: Path) -> None:
    """A stored model that is not safetensors cannot be exported: a real 500 from the app."""
    job = client.submit(SPEC)
    trial = complete_trial(server.store, job.id, accuracy=0.5)
    store_model(server, trial, b"not a model")
    with pytest.raises(ServerError) as info:
        client.download_model(trial.id, tmp_path / "m.onnx", format="onnx")
    error = info.value
    assert error.status == 500 and "ONNX export" in str(error)
    assert error.request_id and f"request id {error.request_id}" in str(error)
    assert not (tmp_path / "m.onnx").exists() and list(tmp_path.iterdir()) == []


# -- retries -------------------------------------------------------------------------------------


def test_reads_retry_gateway_errors(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    for status in (502, 503, 504):
        server.faults.arm(2, status=status)
        assert client.job(job.id).id == job.id
        assert server.faults.seen == [f"GET /api/v1/jobs/{job.id}"] * 3
    server.faults.arm(4, status=503)  # one more than the retries
    with pytest.raises(ServerError) as info:
        client.job(job.id)
    assert info.value.status == 503 and len(server.faults.seen) == 4
    server.faults.arm(1, status=500)  # a real failure is not retried
    with pytest.raises(ServerError):
        client.job(job.id)
    assert len(server.faults.seen) == 1


def test_retry_after_is_honoured(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    server.faults.arm(1, status=503, retry_after="0")
    assert client.job(job.id).id == job.id and len(server.faults.seen) == 2


def test_submit_is_never_sent_twice(client: Client, server: Server, owner: str) -> None:
    before = len(list(client.jobs()))
    server.faults.arm(1, status=502, method="POST", after=True)  # created, but the answer was lost
    with pytest.raises(ServerError):
        client.submit(SPEC)
    assert server.faults.seen == ["POST /api/v1/jobs"]
    assert len(list(client.jobs())) == before + 1


def test_cancel_retries_and_sees_its_own_earlier_success(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    server.faults.arm(1, status=502, method="POST", after=True)  # cancelled, but the answer was lost
    assert client.cancel(job.id).status is JobStatus.cancelled
    assert server.faults.seen[:2] == [f"POST /api/v1/jobs/{job.id}/cancel"] * 2


class DropConnections(httpx.HTTPTransport):
    """A real transport whose first ``drops`` requests fail to connect."""

    def __init__(self, drops: int) -> None:
        super().__init__()
        self.drops = drops
        self.attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts <= self.drops:
            raise httpx.ConnectError("connection refused (injected)", request=request)
        return super().handle_request(request)


def test_connection_errors_are_retried_then_reported(server: Server, key: str) -> None:
    transport = DropConnections(2)
    with Client(url=server.url, api_key=key, transport=transport, backoff=0.01) as client:
        job = client.submit(SPEC)  # never connected: safe to retry even a submit
        assert transport.attempts == 3 and client.job(job.id).id == job.id

    with Client(url="http://127.0.0.1:9", api_key=key, retries=2, backoff=0.01) as nowhere:
        with pytest.raises(ConnectionFailed, match="cannot reach the server at http://127.0.0.1:9"):
            nowhere.job("0" * 32)
    with pytest.raises(ValueError):
        Client(retries=-1)


# -- models --------------------------------------------------------------------------------------


def test_download_model(client: Client, server: Server, tmp_path: Path) -> None:
    job = client.submit(SPEC)
    trial = complete_trial(server.store, job.id, accuracy=0.9)
    with pytest.raises(NotFoundError, match="no model"):
        client.download_model(trial.id, tmp_path / "none.safetensors")
    assert not (tmp_path / "none.safetensors").exists()
    with pytest.raises(ValueError, match="format"):
        client.download_model(trial.id, tmp_path / "m.pt", format="pickle")

    payload = model_bytes()
    store_model(server, trial, payload)
    target = client.download_model(trial.id, tmp_path / "model.safetensors")
    assert target == tmp_path / "model.safetensors"
    assert target.read_bytes() == payload
    into_folder = client.download_model(trial.id, tmp_path)
    assert into_folder == tmp_path / f"trial-{trial.id}.safetensors" and into_folder.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.safetensors", into_folder.name])


def test_client_import_is_light() -> None:
    code = (
        "import sys, nas.client\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'numpy', 'sklearn', 'onnx', 'onnxruntime') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip().split(",") if result.stdout.strip() else []
    assert loaded == [], loaded


# -- events --------------------------------------------------------------------------------------


def test_events_follow_a_job_until_it_ends(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    store = server.store
    server.faults.arm(1, status=503)  # the first connection fails at a proxy: reopened

    def run() -> None:
        time.sleep(1.5)
        while (claimed := store.claim_job("test-runner", 60)) != job.id:
            assert claimed is not None
        trial = store.create_trial(job.id, {"depth": 1})
        store.start_trial(trial.id)
        store.report_epoch(trial.id, 1, {"accuracy": 0.5})
        time.sleep(1.5)
        store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": 0.5})
        store.set_best_trial(job.id, trial.id)
        store.finish_job(job.id, JobStatus.succeeded)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    events = list(client.events(job.id))
    runner.join(10)
    kinds = [e.event for e in events]
    assert kinds[-1] == "end" and events[-1].data == {"status": "succeeded"}
    assert {"job", "trial", "epoch"} <= set(kinds)
    assert all(isinstance(e, Event) and e.id for e in events)
    states = [e.data["state"] for e in events if e.event == "trial"]
    assert states[-1] == "complete"
    assert [e.data["status"] for e in events if e.event == "job"][-1] == "succeeded"
    assert server.faults.seen[0] == f"GET /api/v1/jobs/{job.id}/events"

    with pytest.raises(NotFoundError):
        next(iter(client.events("0" * 32)))

"""The Python SDK and the ``nas`` CLI against the real API served by uvicorn on a localhost port."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from api.app import create_app
from nas.cli import app as cli_app
from nas.client import (
    ApiError,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    SpecError,
)
from nas.settings import Settings
from nas.specs import Job, JobSpec, JobStatus, LayerInfo, Trial, TrialState
from nas.store import Artifact, Store, make_engine, upgrade
from nas.store.engine import current_revision

SPEC: dict[str, Any] = {
    "name": "client-test",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "budget": {"max_trials": 3},
}


@dataclass
class Server:
    url: str
    store: Store
    settings: Settings
    database_url: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real app on a real socket, over a SQLite file; tests isolate themselves by owner."""
    home = tmp_path_factory.mktemp("client-server")
    (home / "data").mkdir()
    database_url = f"sqlite:///{home / 'nas.db'}"
    settings = Settings(home=home, database_url=database_url, data_dir=home / "data")
    engine = make_engine(database_url)
    upgrade(engine)
    store = Store(engine)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(store, settings), log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{port}", store, settings, database_url)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()
        engine.dispose()


@pytest.fixture
def owner() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def key(server: Server, owner: str) -> str:
    return server.store.create_api_key(owner)


@pytest.fixture
def client(server: Server, key: str) -> Iterator[Client]:
    with Client(url=server.url, api_key=key) as c:
        yield c


def _complete_trial(store: Store, job_id: str, **metrics: float) -> Trial:
    trial = store.create_trial(job_id, {"metrics": sorted(metrics)})
    store.start_trial(trial.id)
    return store.finish_trial(trial.id, TrialState.complete, metrics=metrics)


# -- SDK ---------------------------------------------------------------------------------------


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


def test_jobs_iterates_every_page(client: Client, server: Server, key: str) -> None:
    ids = [client.submit({**SPEC, "name": f"job-{i}"}).id for i in range(5)]
    other = server.store.create_api_key("someone-else")
    with Client(url=server.url, api_key=other) as stranger:
        stranger.submit(SPEC)
    listed = list(client.jobs(page_size=2))
    assert [j.id for j in listed] == list(reversed(ids))
    client.cancel(ids[0])
    assert [j.id for j in client.jobs(status="cancelled", page_size=1)] == [ids[0]]
    assert [j.id for j in client.jobs(status="queued", page_size=3)] == list(reversed(ids[1:]))


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
    small = _complete_trial(server.store, job.id, accuracy=0.8, nonzero_params=100)
    big = _complete_trial(server.store, job.id, accuracy=0.95, nonzero_params=5000)
    _complete_trial(server.store, job.id, accuracy=0.75, nonzero_params=200)  # dominated by small
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


def test_wait_reports_progress_and_times_out(client: Client, server: Server) -> None:
    job = client.submit(SPEC)
    seen: list[Job] = []
    with pytest.raises(TimeoutError):
        client.wait(job.id, progress=seen.append, poll_s=0.01, timeout=0.05)
    assert seen and all(j.id == job.id and j.status is JobStatus.queued for j in seen)


def test_error_hierarchy(client: Client, server: Server, owner: str) -> None:
    for error in (AuthenticationError, NotFoundError, ConflictError, SpecError):
        assert issubclass(error, ApiError)

    with Client(url=server.url, api_key="nas_wrong") as bad:
        with pytest.raises(AuthenticationError) as info:
            bad.submit(SPEC)
        assert info.value.status == 401 and "invalid" in str(info.value)
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

    with pytest.raises(SpecError) as spec_error:
        client.submit({**SPEC, "training": {"epochs": 0}, "search_space": {"name": "nowhere"}})
    fields = dict(spec_error.value.errors)
    assert set(fields) == {"training.epochs", "search_space.name"}
    assert "sparse_mlp" in fields["search_space.name"]
    assert spec_error.value.status == 422
    assert "training.epochs" in str(spec_error.value)


def test_download_model(client: Client, server: Server, tmp_path: Path) -> None:
    job = client.submit(SPEC)
    trial = _complete_trial(server.store, job.id, accuracy=0.9)
    with pytest.raises(NotFoundError, match="no model"):
        client.download_model(trial.id, tmp_path / "none.safetensors")
    assert not (tmp_path / "none.safetensors").exists()

    payload = os.urandom(70_000)
    relative = f"{job.id}/{trial.id}.safetensors"
    (server.settings.artifact_dir / job.id).mkdir(parents=True)
    (server.settings.artifact_dir / relative).write_bytes(payload)
    server.store.add_artifact(
        Artifact(trial.id, "model", "safetensors", relative, len(payload), hashlib.sha256(payload).hexdigest())
    )
    target = client.download_model(trial.id, tmp_path / "model.safetensors")
    assert target == tmp_path / "model.safetensors"
    assert target.read_bytes() == payload
    with pytest.raises(NotFoundError):
        client.download_model(trial.id, tmp_path / "model.onnx", format="onnx")


def test_client_import_is_light() -> None:
    code = (
        "import sys, nas.client\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'numpy', 'sklearn') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip().split(",") if result.stdout.strip() else []
    assert "torch" not in loaded and "ray" not in loaded, loaded


# -- CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(server: Server, key: str) -> dict[str, str]:
    return {"NAS_URL": server.url, "NAS_API_KEY": key, "NAS_DATABASE_URL": server.database_url}


def _invoke(args: list[str], env: dict[str, str]) -> Any:
    result = CliRunner().invoke(cli_app, args, env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_cli_keys_create(server: Server, cli_env: dict[str, str]) -> None:
    result = _invoke(["keys", "create", "carol"], cli_env)
    assert result.exit_code == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("nas_") and " " not in key
    assert server.store.authenticate(key).owner == "carol"
    assert server.store.authenticate(key).is_admin is False
    with Client(url=server.url, api_key=key) as carol:
        assert list(carol.jobs()) == []

    admin = _invoke(["keys", "create", "root", "--admin"], cli_env)
    admin_key = admin.stdout.strip().splitlines()[-1]
    assert server.store.authenticate(admin_key).is_admin is True


def test_cli_db_upgrade_and_keys_on_a_fresh_database(empty_database_url: str) -> None:
    env = {"NAS_DATABASE_URL": empty_database_url}
    result = _invoke(["db", "upgrade"], env)
    assert result.exit_code == 0, result.output
    engine = make_engine(empty_database_url)
    try:
        head = current_revision(engine)
        assert head is not None and head in result.stdout
        again = _invoke(["db", "upgrade"], env)  # idempotent
        assert again.exit_code == 0 and head in again.stdout

        created = _invoke(["keys", "create", "dave"], env)
        assert created.exit_code == 0
        key = created.stdout.strip().splitlines()[-1]
        assert Store(engine).authenticate(key).owner == "dave"
    finally:
        engine.dispose()


def test_cli_submit_jobs_trials_cancel(server: Server, cli_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "name": "cli-job"}))
    submitted = _invoke(["submit", str(path)], cli_env)
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    job = server.store.get_job(job_id)
    assert job.name == "cli-job" and job.status is JobStatus.queued

    listed = _invoke(["jobs"], cli_env)
    assert listed.exit_code == 0
    assert job_id in listed.stdout and "cli-job" in listed.stdout and "queued" in listed.stdout

    trial = _complete_trial(server.store, job_id, accuracy=0.875, sparsity=0.9)
    pending = server.store.create_trial(job_id, {"depth": 3})
    trials = _invoke(["trials", job_id], cli_env)
    assert trials.exit_code == 0, trials.stderr
    assert trial.id in trials.stdout and pending.id in trials.stdout
    assert "0.875" in trials.stdout and "complete" in trials.stdout
    only_queued = _invoke(["trials", job_id, "--state", "queued"], cli_env)
    assert pending.id in only_queued.stdout and trial.id not in only_queued.stdout
    front = _invoke(["trials", job_id, "--pareto"], cli_env)
    assert trial.id in front.stdout and pending.id not in front.stdout

    cancelled = _invoke(["cancel", job_id], cli_env)
    assert cancelled.exit_code == 0
    assert "cancelled" in cancelled.stderr
    assert server.store.get_job(job_id).status is JobStatus.cancelled

    again = _invoke(["cancel", job_id], cli_env)
    assert again.exit_code == 1
    assert "409" in again.stderr and "cancelled" in again.stderr


def test_cli_errors_go_to_stderr(server: Server, cli_env: dict[str, str], tmp_path: Path) -> None:
    bad_key = _invoke(["jobs"], {**cli_env, "NAS_API_KEY": "nas_nope"})
    assert bad_key.exit_code != 0
    assert "401" in bad_key.stderr and "invalid" in bad_key.stderr
    assert bad_key.stdout.strip() == ""

    unknown = _invoke(["trials", "f" * 32], cli_env)
    assert unknown.exit_code != 0 and "not found" in unknown.stderr

    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "training": {"epochs": 0}}))
    invalid = _invoke(["submit", str(spec)], cli_env)
    assert invalid.exit_code != 0 and "training.epochs" in invalid.stderr

    unreachable = _invoke(["jobs"], {**cli_env, "NAS_URL": "http://127.0.0.1:9"})
    assert unreachable.exit_code != 0 and "cannot reach" in unreachable.stderr


@pytest.fixture(scope="module")
def nas_script() -> str:
    script = shutil.which("nas") or str(Path(sys.executable).with_name("nas"))
    if not Path(script).exists():
        pytest.fail("the `nas` console script is not installed; run `pip install -e .`")
    return script


def test_console_script_end_to_end(server: Server, nas_script: str, tmp_path: Path) -> None:
    """The installed `nas` command in a real process: mint a key, submit with it, fail with a bad one."""
    env = {**os.environ, "NAS_URL": server.url, "NAS_DATABASE_URL": server.database_url, "NO_COLOR": "1"}
    env.pop("NAS_API_KEY", None)
    created = subprocess.run([nas_script, "keys", "create", "erin"], env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert created.stdout.strip() == key  # the key alone on stdout; the explanation goes to stderr
    assert server.store.authenticate(key).owner == "erin"

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    submitted = subprocess.run([nas_script, "submit", str(path)], env={**env, "NAS_API_KEY": key},
                               capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert server.store.get_job(job_id).owner == "erin"

    refused = subprocess.run([nas_script, "cancel", job_id], env={**env, "NAS_API_KEY": "nas_bad"},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "invalid" in refused.stderr and refused.stdout == ""

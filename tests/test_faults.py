"""Faults under the real `nas serve`: a Ray worker killed mid-trial, PostgreSQL connections cut.

The first kills the process that trains a trial (SIGKILL, as the kernel's OOM killer would);
the second terminates every server connection to the job's database several times mid-job.
Either way the job must succeed with a complete, gap-free and duplicate-free trial set.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator

import psutil
import pytest

from nas.client import Client
from nas.specs import JobStatus, Trial, TrialState
from tests.fixtures_store import PG_ADMIN_URL, _admin_connect
from benchmarks.server_process import ServerProcess
from tests.test_e2e_server import digits_spec, server_factory, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.ray


def _trial_workers(server: ServerProcess) -> list[psutil.Process]:
    """The Ray worker processes of this server's local Ray that host a Tune trial."""
    assert server.process is not None
    found = []
    for proc in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _running_with_an_epoch(client: Client, job_id: str) -> list[Trial]:
    running = [t for t in client.trials(job_id) if t.state is TrialState.running]
    return [t for t in running if client.trial(t.id).history]


def _check_succeeded(client: Client, job_id: str, n_trials: int) -> list[Trial]:
    job = client.wait(job_id, progress=False, poll_s=1, timeout=600)
    assert job.status is JobStatus.succeeded, job.error
    trials = list(client.trials(job_id))
    assert [t.number for t in trials] == list(range(n_trials))
    assert len({t.id for t in trials}) == n_trials
    assert all(t.state is TrialState.complete for t in trials), [(t.state, t.error) for t in trials]
    for summary in trials:
        trial = client.trial(summary.id)
        epochs = job.spec["training"]["epochs"]
        assert [h.epoch for h in trial.history] == list(range(1, epochs + 1))
        assert trial.has_model and trial.heartbeat_at is not None
    return trials


def test_sigkill_of_the_ray_worker_mid_trial_retries_the_trial(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    key = server.create_key("dave")
    server.start()
    n_trials = 2
    with Client(server.url, key) as client:
        # One trial at a time, so the only trial worker is the running trial's.
        job = client.submit(digits_spec(name="worker-kill", training={"epochs": 15, "batch_size": 32, "lr": 0.003},
                                        budget={"max_trials": n_trials, "max_concurrent": 1, "max_retries": 1}))
        wait_for(lambda: bool(_running_with_an_epoch(client, job.id)), 240, "a running trial that reported an epoch")
        (victim,) = [t for t in client.trials(job.id) if t.state is TrialState.running]
        workers = _trial_workers(server)
        assert workers, "no Ray trial worker process found under nas serve"
        for proc in workers:
            proc.send_signal(signal.SIGKILL)

        trials = _check_succeeded(client, job.id, n_trials)
        retried = next(t for t in trials if t.id == victim.id)
        assert retried.attempts == 2, retried
        assert all(t.attempts == 1 for t in trials if t.id != victim.id)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of this test's own, so cutting its connections disturbs no other test."""
    try:
        admin = _admin_connect()
    except Exception as exc:  # noqa: BLE001 - the fixture module words the skip or failure
        pytest.skip(f"PostgreSQL is unreachable at {PG_ADMIN_URL}: {exc}")
    name = f"nas_faults_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    host_part = PG_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{host_part}/{name}"
    finally:
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _terminate_connections(database: str) -> int:
    with _admin_connect() as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


@pytest.mark.postgres
def test_postgresql_connections_killed_mid_job_the_job_succeeds(
    pg_url: str, server_factory: Callable[..., ServerProcess]  # this order stops the server first
) -> None:
    server = server_factory(NAS_DATABASE_URL=pg_url)
    key = server.create_key("erin")
    server.start()
    database = pg_url.rsplit("/", 1)[1]
    n_trials = 4
    with Client(server.url, key) as client:
        job = client.submit(digits_spec(name="pg-cut", training={"epochs": 8, "batch_size": 32, "lr": 0.003},
                                        budget={"max_trials": n_trials, "max_concurrent": 2}))
        wait_for(lambda: bool(_running_with_an_epoch(client, job.id)), 240, "a running trial that reported an epoch")
        cuts = 0
        while cuts < 20 and not client.job(job.id).status.finished:
            cuts += _terminate_connections(database) > 0
            time.sleep(0.5)
        assert cuts >= 2, "the job ended before its connections could be cut twice"

        trials = _check_succeeded(client, job.id, n_trials)
        assert all(t.attempts == 1 for t in trials), [t.attempts for t in trials]

"""End to end: a job on an agent target, measured by two real ``nas agent`` processes, one of them
SIGKILLed mid-measurement.

``nas serve`` (dispatcher, local Ray, PostgreSQL) and two agents of the target ``lab``, each a
separate process with its own home folder, talking to the server over HTTP on 127.0.0.1 only. The
job's trials train on Ray and are then timed by the agents under ``torch``. The first agent caught
holding a lease is SIGKILLed before it reports (it is frozen with SIGSTOP first, so the test knows
the lease is still held when the kill lands); its task is leased again to the other agent once the
lease expires. The job must succeed with every trial complete, each trial's latency the one an
agent reported (recorded with the agent and runtime), measured once. The agent key reads nothing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nas.client import Client
from nas.specs import JobStatus, TrialState
from nas.store import Store
from nas.store.tables import MeasurementTaskRow, utcnow
from benchmarks.server_process import ServerProcess
from tests.agent_processes import AgentProcess, agent_key, agents_of, start_server, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])]

TRIALS = 3
SPEC: dict[str, Any] = {
    "name": "agents-e2e",
    "search_space": {"name": "sparse_mlp", "params": {"max_depth": 2, "width_choices": [128, 256]}},
    "dataset": {"name": "digits"},
    "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.8}},
    "training": {"epochs": 2, "batch_size": 32},
    "budget": {"max_trials": TRIALS, "max_concurrent": 1, "target_timeout_s": 600},
    "target": "lab",
    "target_runtime": "torch",
    "seed": 0,
}


@pytest.fixture
def server(tmp_path: Path, data_dir: Path, empty_database_url: str) -> Iterator[tuple[ServerProcess, Store]]:
    with start_server(tmp_path, empty_database_url, data_dir=data_dir) as served:
        yield served


def held_leases(store: Store, agent_id: str) -> list[str]:
    """The tasks ``agent_id`` holds now: leased to it, lease not expired, not reported."""
    with Session(store.engine) as session:
        return list(session.scalars(select(MeasurementTaskRow.id).where(
            MeasurementTaskRow.agent_id == agent_id, MeasurementTaskRow.state == "leased",
            MeasurementTaskRow.lease_expires_at > utcnow(),
        )))  # fmt: skip


def kill_mid_measurement(store: Store, agents: dict[str, AgentProcess], timeout: float) -> tuple[str, str]:
    """SIGKILL the first agent caught holding a lease it has not reported; its name and that task's id.

    An agent seen holding a lease is frozen (SIGSTOP) and the lease looked up again: still held, the
    agent is killed with the measurement unreported; already reported, it is let go on (SIGCONT).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in store.measurements.target("alice", "lab").agents:
            if not record.leased:
                continue
            agent = agents[record.name]
            agent.process.send_signal(signal.SIGSTOP)
            held = held_leases(store, record.id)
            if held:
                agent.kill()
                return record.name, held[0]
            agent.process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise TimeoutError(f"no agent held a lease within {timeout} s")


def test_a_job_on_an_agent_target_survives_an_agent_killed_mid_measurement(
    server: tuple[ServerProcess, Store], tmp_path: Path, backend: str
) -> None:
    serve, store = server
    user_key = serve.create_key("alice")
    key = agent_key(serve, "alice")

    for path in ("/api/v1/jobs", "/api/v1/models", "/api/v1/datasets", "/api/v1/keys"):
        refused = httpx.get(f"{serve.url}{path}", headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 403, (path, refused.text)
    submitted = httpx.post(f"{serve.url}/api/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {key}"})
    assert submitted.status_code == 403, submitted.text

    agents = {
        name: AgentProcess(tmp_path / name, serve.url, key, "lab", "--name", name, "--runtime", "torch,onnxruntime",
                           "--poll", "1")
        for name in ("lab-a", "lab-b")
    }  # fmt: skip
    try:
        wait_for(lambda: len(agents_of(serve, user_key, "lab")) == 2, 180, lambda: [a.log() for a in agents.values()])
        with Client(serve.url, api_key=user_key) as client:
            job = client.submit(SPEC)
            killed, killed_task = kill_mid_measurement(store, agents, timeout=600)
            survivor = next(name for name in agents if name != killed)
            job = client.wait(job.id, progress=False, timeout=900)
            assert job.status is JobStatus.succeeded, (job.error, serve.log()[-3000:])
            trials = [client.trial(t.id) for t in client.trials(job.id)]
        assert agents[survivor].stop() == 0, agents[survivor].log()
    finally:
        for agent in agents.values():
            if agent.process.poll() is None:
                agent.kill()

    assert agents[killed].process.returncode == -signal.SIGKILL
    assert [t.number for t in trials] == list(range(TRIALS))
    assert all(t.state is TrialState.complete for t in trials)
    with Session(store.engine) as session:
        per_trial = dict(session.execute(
            select(MeasurementTaskRow.trial_id, func.count()).where(
                MeasurementTaskRow.trial_id.in_([t.id for t in trials])).group_by(MeasurementTaskRow.trial_id)
        ).all())  # fmt: skip
    assert per_trial == {t.id: 1 for t in trials}  # one measurement task per trial: none lost, none measured twice

    reported = {}
    for trial in trials:
        by = trial.outputs["measured_by"]
        task = store.measurements.task(by["task_id"])
        assert task.state == "done" and task.trial_id == trial.id and task.result is not None
        assert by["target"] == "lab" and by["runtime"]["name"] == "torch" and by["agent"] in agents
        assert by["agent"] == task.result["agent"] and by["attempts"] == task.attempts
        assert trial.metrics["latency_ms"] == task.result["stats"]["p10_ms"]  # the agent's measurement
        reported[task.id] = (by["agent"], task.attempts)
    assert reported[killed_task] == (survivor, 2)  # leased again once the killed agent's lease expired
    assert all(attempts == 1 for task_id, (_, attempts) in reported.items() if task_id != killed_task)

    done = {a["name"]: a["measurements_done"] for a in agents_of(serve, user_key, "lab")}
    assert done[killed] + done[survivor] == TRIALS
    assert done[killed] == sum(agent == killed for agent, _ in reported.values())
    assert killed_task not in agents[killed].log()  # killed before it reported
    survivor_log = agents[survivor].log()
    assert all(survivor_log.count(f"task {task_id} torch: p10") == 1
               for task_id, (agent, _) in reported.items() if agent == survivor)  # fmt: skip

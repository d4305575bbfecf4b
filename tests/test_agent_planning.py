"""Planning on an agent target, end to end with ``nas serve`` and a real ``nas agent`` process.

* A trained trial that no agent measures within ``budget.target_timeout_s`` fails saying so, and
  its measurement task is withdrawn (no agent times it later).
* Confidence-gated measurement: with the target's predictor stored, a candidate whose prediction
  lies within the predictor's error band of ``constraints.max_latency_ms`` is measured on the agent
  before training; that measurement decides (``probed_latency_ms``), so a candidate over the limit
  is ``infeasible`` untrained, and one under it trains. Every trial the agent then measures is kept
  as an observation of the target's predictor, which refits its correction on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nas.client import Client
from nas.latency.store import bundled_predictors
from nas.specs import JobStatus, TrialState
from nas.store import Store
from nas.store.tables import LatencyObservationRow, MeasurementTaskRow
from benchmarks.server_process import ServerProcess
from tests.agent_processes import AgentProcess, agent_key, agents_of, start_server, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])]


def spec(target: str, **changes: Any) -> dict[str, Any]:
    return {
        "search_space": {"name": "sparse_mlp", "params": {"max_depth": 1, "width_choices": [64, 128]}},
        "dataset": {"name": "digits"},
        "training": {"epochs": 1, "batch_size": 64},
        "target": target,
        "target_runtime": "onnxruntime",
        "budget": {"max_trials": 2, "max_concurrent": 1},
        **changes,
    }


@pytest.fixture
def served(tmp_path: Path, data_dir: Path, empty_database_url: str) -> Iterator[tuple[ServerProcess, Store, str, str]]:
    with start_server(tmp_path, empty_database_url, data_dir=data_dir) as (server, store):
        yield server, store, server.create_key("alice"), agent_key(server, "alice")


def test_a_trial_no_agent_measures_fails_after_target_timeout(
    served: tuple[ServerProcess, Store, str, str], tmp_path: Path, backend: str
) -> None:
    server, store, user_key, agent_key = served
    agent = AgentProcess(tmp_path / "gone", server.url, agent_key, "gone", "--runtime", "onnxruntime", "--poll", "1")
    try:
        wait_for(lambda: len(agents_of(server, user_key, "gone")) == 1, 120, agent.log)
    finally:
        assert agent.stop() == 0, agent.log()  # the target's only agent stops before any work comes
    with Client(server.url, api_key=user_key) as client:
        job = client.submit(spec("gone", budget={"max_trials": 1, "target_timeout_s": 3}))
        job = client.wait(job.id, progress=False, timeout=600)
        (trial,) = list(client.trials(job.id))
    assert job.status is JobStatus.failed
    assert trial.state is TrialState.failed
    assert trial.error is not None
    assert trial.error.startswith("no agent of target 'gone' measured it within budget.target_timeout_s=3 s")
    task = store.measurements.trial_task(trial.id)
    assert task is not None and task.state == "failed" and task.agent_id is None  # withdrawn, never leased


def test_uncertain_candidates_are_measured_on_the_agent_before_training(
    served: tuple[ServerProcess, Store, str, str], tmp_path: Path, backend: str
) -> None:
    server, store, user_key, agent_key = served
    agent = AgentProcess(tmp_path / "pi", server.url, agent_key, "pi", "--runtime", "onnxruntime", "--poll", "1")
    try:
        wait_for(lambda: len(agents_of(server, user_key, "pi")) == 1, 120, agent.log)
        target = store.measurements.target("alice", "pi")
        # The target's predictor, with an error band so wide that every candidate is uncertain.
        predictor = bundled_predictors()[0].read_text()
        store.measurements.add_predictor(target.id, "onnxruntime", predictor, {"error_p90": 1e6})
        with Client(server.url, api_key=user_key) as client:
            over = client.wait(client.submit(spec("pi", constraints={"max_latency_ms": 1e-6})).id, progress=False,
                               timeout=600)  # fmt: skip
            refused = list(client.trials(over.id))
            under = client.wait(client.submit(spec("pi", constraints={"max_latency_ms": 1000.0})).id, progress=False,
                                timeout=900)  # fmt: skip
            trained = [client.trial(t.id) for t in client.trials(under.id)]
    finally:
        if agent.process.poll() is None:
            assert agent.stop() == 0, agent.log()

    assert over.status is JobStatus.failed and refused
    for trial in refused:
        assert trial.state is TrialState.infeasible and trial.error is not None
        assert "measured on the target before training" in trial.error
        assert trial.metrics["probed_latency_ms"] > 0 and "predicted_latency_ms" in trial.metrics

    assert under.status is JobStatus.succeeded, under.error
    for trial in trained:
        assert trial.state is TrialState.complete
        assert 0 < trial.metrics["probed_latency_ms"] <= 1000.0
        assert trial.outputs["measured_by"]["target"] == "pi"
    with Session(store.engine) as session:
        probes = session.scalar(select(func.count()).select_from(MeasurementTaskRow).where(
            MeasurementTaskRow.purpose == "probe", MeasurementTaskRow.state == "done"))  # fmt: skip
        observed = list(session.scalars(select(LatencyObservationRow).where(LatencyObservationRow.job_id == under.id)))
    assert probes == len(refused) + len(trained)  # one measurement before training per candidate
    assert len(observed) == len(trained)  # each measured trial refines the target's predictor
    stored = json.loads(predictor)
    for row in observed:
        assert row.record["measured_ms"] > 0 and row.record["predicted_ms"] > 0
        assert row.target_key.startswith(stored["identity"]["target"])

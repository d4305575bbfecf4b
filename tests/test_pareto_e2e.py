"""Multi-objective search through the real service: `nsga2` and `tpe` jobs on digits via `nas serve`.

The nsga2 job (accuracy and measured latency, a parameter budget) is killed with SIGKILL mid-way
and restarted; it must finish without repeating a finished trial or an architecture, record the
candidates over budget as ``infeasible`` without training them, and ``GET /jobs/{id}/pareto``
must return exactly the non-dominated complete trials, computed here by brute force.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nas.arch import fingerprint
from nas.client import Client
from nas.specs import JobStatus, Trial, TrialState
from benchmarks.server_process import ServerProcess

pytestmark = pytest.mark.ray

MAX_PARAMS = 20_000  # excludes the wider two-layer networks: 64 inputs, 10 classes


def spec(name: str, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": f"pareto-{name}",
        "search_space": {"name": "sparse_mlp", "params": {"max_depth": 2, "width_choices": [16, 64, 256],
                                                          "activation_choices": ["relu", "tanh"]}},
        "strategy": {"name": name},
        "dataset": {"name": "digits"},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.5}},
        "training": {"epochs": 6, "batch_size": 32, "lr": 0.003},
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
        "constraints": {"max_params": MAX_PARAMS},
        "budget": {"max_trials": 10, "max_concurrent": 2},
        "seed": 2,
    }
    out.update(overrides)
    return out


@pytest.fixture
def server(tmp_path: Path, data_dir: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "home"
    home.mkdir()
    process = ServerProcess(home, {"NAS_DATA_DIR": str(data_dir)})
    yield process
    process.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def brute_force_front(trials: list[Trial]) -> set[str]:
    """Ids of complete trials no other complete trial beats: validation accuracy up, latency down."""
    complete = [t for t in trials if t.state is TrialState.complete]

    def beats(a: Trial, b: Trial) -> bool:
        a_acc, b_acc = a.metrics["val_accuracy"], b.metrics["val_accuracy"]
        ge = a_acc >= b_acc and a.metrics["latency_ms"] <= b.metrics["latency_ms"]
        gt = a_acc > b_acc or a.metrics["latency_ms"] < b.metrics["latency_ms"]
        return ge and gt

    return {t.id for t in complete if not any(beats(o, t) for o in complete)}


def test_nsga2_job_survives_sigkill_and_returns_the_brute_force_pareto_front(server: ServerProcess) -> None:
    key = server.create_key("pareto")
    server.start()
    with Client(server.url, key) as client:
        job = client.submit(spec("nsga2", strategy={"name": "nsga2", "params": {"population_size": 4}}))

        def mid_job() -> bool:
            states = [t.state for t in client.trials(job.id)]
            return states.count(TrialState.complete) >= 2 and TrialState.running in states

        wait_for(mid_job, 300, "two complete trials and a running one")
        finished_before = {t.id: t.metrics for t in client.trials(job.id) if t.state.finished}
        server.kill()

    server.start()
    with Client(server.url, key) as client:
        final = client.wait(job.id, progress=False, poll_s=1, timeout=900)
        assert final.status is JobStatus.succeeded, final.error
        trials = list(client.trials(job.id))
        pareto = client.pareto(job.id)

    assert [t.number for t in trials] == list(range(10))
    assert all(t.state in (TrialState.complete, TrialState.infeasible) for t in trials), [t.state for t in trials]
    assert len({fingerprint(t.arch) for t in trials}) == 10, "an architecture was proposed twice"
    for trial_id, metrics in finished_before.items():  # finished work was kept, not redone
        assert next(t for t in trials if t.id == trial_id).metrics == metrics
    for t in trials:
        if t.state is TrialState.infeasible:
            assert t.metrics["params"] > MAX_PARAMS and not t.has_model and "accuracy" not in t.metrics
        else:
            assert t.metrics["params"] <= MAX_PARAMS and t.has_model

    front = {t.id for t in pareto}
    assert front == brute_force_front(trials)
    assert front and all(t.state is TrialState.complete for t in pareto)


def test_a_single_objective_tpe_job_completes_through_the_service(server: ServerProcess) -> None:
    key = server.create_key("tpe")
    server.start()
    with Client(server.url, key) as client:
        job = client.submit(spec("tpe", objectives=[{"metric": "accuracy", "direction": "maximize"}],
                                 constraints={}, budget={"max_trials": 6, "max_concurrent": 2},
                                 training={"epochs": 3, "batch_size": 32, "lr": 0.003}))
        final = client.wait(job.id, progress=False, poll_s=1, timeout=600)
        assert final.status is JobStatus.succeeded, final.error
        trials = list(client.trials(job.id))
        assert [t.number for t in trials] == list(range(6))
        assert all(t.state is TrialState.complete and t.metrics["accuracy"] > 0.5 for t in trials)
        assert len({fingerprint(t.arch) for t in trials}) == 6
        best = max(trials, key=lambda t: t.metrics["val_accuracy"])  # the first of equals, as the runner keeps it
        assert final.best_trial_id == best.id

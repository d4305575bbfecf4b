"""Every strategy through the real service: jobs on digits complete, lineage is right, and a
server killed with SIGKILL mid-way continues each job after a restart without repeating a
finished trial.

All six jobs run side by side on one ``nas serve`` (so one crash and one restart cover them all).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from nas.client import Client
from nas.specs import JobStatus, Trial, TrialState
from benchmarks.server_process import ServerProcess

pytestmark = pytest.mark.ray

MLP = {"name": "sparse_mlp", "params": {"max_depth": 2, "width_choices": [32, 64, 128]}}
TRAINING = {"epochs": 4, "batch_size": 64, "lr": 0.003}


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name, "dataset": {"name": "digits"}, "search_space": MLP, "training": TRAINING,
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.8}},
        "budget": {"max_trials": 6, "max_concurrent": 1}, "seed": 3, **fields,
    }


JOBS: dict[str, dict[str, Any]] = {
    "random": job("random", strategy={"name": "random", "params": {"random_mask_control": True}}),
    "tpe": job("tpe", strategy={"name": "tpe"}),
    "nsga2": job(
        "nsga2", strategy={"name": "nsga2", "params": {"population_size": 4}},
        objectives=[{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
    ),
    "lottery_ticket": job(
        "lottery", strategy={"name": "lottery_ticket", "params": {"n_chains": 2, "rounds": 2, "rate": 0.5, "rewind_step": 2}},
    ),
    "dass": job(
        "dass", search_space={"name": "dass_darts", "params": {"cells": 2, "channels": 4, "nodes": 2}},
        strategy={"name": "dass", "params": {"sparsities": [0.5, 0.9], "pretrain_epochs": 1, "prune_epochs": 1,
                                             "finetune_epochs": 1}},
        sparsifier={"name": "hydra"}, training={**TRAINING, "epochs": 3}, budget={"max_trials": 3, "max_concurrent": 1},
    ),
    "supertickets": job(
        "supertickets",
        search_space={"name": "supernet", "params": {"stem_channels": 4, "stage_channels": [8, 12], "depth_choices": [1, 2],
                                                     "expand_choices": [1, 2], "kernel_choices": [3, 5]}},
        strategy={"name": "supertickets", "params": {"targets": [0.5, 0.8], "step": 0.2, "interval_epochs": 0.5,
                                                     "retrain_epochs": 1, "calibration_batches": 4}},
        training={"epochs": 3, "batch_size": 128, "lr": 0.005}, budget={"max_trials": 5, "max_concurrent": 1},
    ),
}


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def lineage_is_right(name: str, trials: list[Trial]) -> None:
    by_id = {t.id: t for t in trials}
    roots = [t for t in trials if t.parent_id is None]
    children = [t for t in trials if t.parent_id is not None]
    assert all(t.parent_id in by_id for t in children), name
    if name == "dass":
        (search,) = roots
        assert search.outputs.get("genotype") and len(children) == 2
        assert all(c.parent_id == search.id for c in children)
    elif name == "supertickets":
        (supernet,) = roots
        assert supernet.outputs.get("tickets")
        assert children and all(c.parent_id == supernet.id for c in children)
        assert {c.arch["ticket"] for c in children} == {"direct", "retrain"}
    elif name == "lottery_ticket":
        assert len(roots) == 2  # one dense round 0 per chain
        for child in children:
            parent = by_id[child.parent_id]
            assert child.arch["lottery_chain"] == parent.arch["lottery_chain"]
            assert child.arch["lottery_round"] == parent.arch["lottery_round"] + 1
            assert child.metrics["sparsity"] > parent.metrics["sparsity"]
    elif name == "random":
        for child in children:  # random-mask controls of found networks
            assert by_id[child.parent_id].arch == child.arch


@pytest.fixture
def server(tmp_path: Path, data_dir: Path) -> Any:
    server = ServerProcess(tmp_path / "home", {"NAS_DATA_DIR": str(data_dir)})
    server.home.mkdir()
    yield server
    server.stop()


def test_every_strategy_completes_and_resumes_after_sigkill(server: ServerProcess) -> None:
    key = server.create_key("researcher")
    server.start("--max-jobs", str(len(JOBS)))
    with Client(server.url, key) as client:
        jobs = {name: client.submit(spec).id for name, spec in JOBS.items()}

        def each_job_has_a_finished_trial() -> bool:
            return all(
                client.job(job_id).status.finished or any(t.state.finished for t in client.trials(job_id))
                for job_id in jobs.values()
            )

        wait_for(each_job_has_a_finished_trial, 900, "a finished trial in every job")
        before = {job_id: {t.id: t for t in client.trials(job_id)} for job_id in jobs.values()}
        server.kill()

    server.start("--max-jobs", str(len(JOBS)))
    with Client(server.url, key) as client:
        for name, job_id in jobs.items():
            final = client.wait(job_id, progress=False, poll_s=2, timeout=1200)
            assert final.status is JobStatus.succeeded, (name, final.error)
            trials = [client.trial(t.id) for t in client.trials(job_id)]
            assert [t.number for t in trials] == list(range(len(trials))), name
            assert all(t.state in (TrialState.complete, TrialState.infeasible) for t in trials), (
                name, [(t.number, t.state, t.error) for t in trials])
            for trial in trials:  # finished before the crash: kept as they were, not run again
                earlier = before[job_id].get(trial.id)
                if earlier is not None and earlier.state.finished:
                    assert (trial.state, trial.attempts, trial.finished_at) == (
                        earlier.state, earlier.attempts, earlier.finished_at), name
            if name not in ("tpe", "nsga2"):  # Optuna's samplers may propose an architecture again
                plans = [str((t.parent_id, sorted(t.arch.items()))) for t in trials]
                assert len(set(plans)) == len(plans), f"{name} ran a plan twice"
            for trial in trials:
                if trial.state is TrialState.complete:
                    assert trial.metrics["latency_ms"] > 0, name
                    if not (name == "dass" and trial.parent_id is None):  # DASS's one-shot supernet: no prediction
                        assert trial.metrics["predicted_latency_ms"] > 0, name
                    assert trial.has_model and trial.history, name
            lineage_is_right(name, trials)

"""Every training strategy ends its trials the same way (``nas.training.end_trial``): one small job
per strategy runs end to end on a real local Ray, and every complete trial carries the same
latency metrics with the same meaning, so a job optimising ``latency_median_ms`` has a Pareto
front whatever its strategy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient

from api.app import create_app
from nas.metrics import LATENCY, METRICS
from nas.settings import Settings
from nas.specs import JobSpec, JobStatus, TrialState
from nas.store import Store, make_engine, upgrade
from workers.runner import JobRunner

pytestmark = pytest.mark.ray

MLP = {"name": "sparse_mlp", "params": {"max_depth": 2, "width_choices": [16, 32]}}
OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_median_ms", "direction": "minimize"}]


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name, "dataset": {"name": "digits"}, "search_space": MLP, "objectives": OBJECTIVES,
        "training": {"epochs": 1, "batch_size": 64, "lr": 0.003},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.8}},
        "budget": {"max_trials": 2, "max_concurrent": 1}, "seed": 1, **fields,
    }


# Two trials each; DASS and SuperTickets each make a search (or supernet) trial and a child.
JOBS: dict[str, dict[str, Any]] = {
    "random": job("random", strategy={"name": "random"}),
    "tpe": job("tpe", strategy={"name": "tpe"}),
    "lottery_ticket": job("lottery", strategy={"name": "lottery_ticket", "params": {"n_chains": 1, "rounds": 1}}),
    "dass": job(
        "dass", search_space={"name": "dass_darts", "params": {"cells": 2, "channels": 4, "nodes": 2}},
        strategy={"name": "dass", "params": {"sparsities": [0.5], "pretrain_epochs": 1, "prune_epochs": 1,
                                             "finetune_epochs": 1}},
        sparsifier={"name": "hydra"}, training={"epochs": 3, "batch_size": 128, "lr": 0.003},
    ),
    "supertickets": job(
        "supertickets",
        search_space={"name": "supernet", "params": {"stem_channels": 4, "stage_channels": [8, 12], "depth_choices": [1, 2],
                                                     "expand_choices": [1, 2], "kernel_choices": [3, 5]}},
        strategy={"name": "supertickets", "params": {"targets": [0.5], "step": 0.5, "interval_epochs": 0.5,
                                                     "retrain_epochs": 0, "calibration_batches": 2}},
        training={"epochs": 2, "batch_size": 128, "lr": 0.005},
    ),
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("NAS_HOME")
    os.environ["NAS_HOME"] = str(home)  # the workers Ray starts inherit it: their files stay in the test's folder
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield Settings(home=home, data_dir=tmp_path_factory.mktemp("data"))
    ray.shutdown()
    if saved is None:
        del os.environ["NAS_HOME"]
    else:
        os.environ["NAS_HOME"] = saved


@pytest.fixture(scope="module")
def store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


@pytest.fixture(scope="module")
def finished(store: Store, settings: Settings) -> dict[str, str]:
    """Strategy -> id of its job, run to its end (by the dispatcher's runner) the first time it is asked for."""
    class Jobs(dict[str, str]):
        def __missing__(self, strategy: str) -> str:
            job_id = self[strategy] = store.create_job(JobSpec.model_validate(JOBS[strategy]), "tester").id
            assert store.claim_job("lifecycle-test", 60) == job_id
            JobRunner(store, settings, job_id, "lifecycle-test").run()
            return job_id

    return Jobs()


@pytest.mark.parametrize("strategy", list(JOBS))
def test_every_complete_trial_records_the_same_latency_metrics(store: Store, finished: dict[str, str], strategy: str) -> None:
    job = store.get_job(finished[strategy])
    assert job.status is JobStatus.succeeded, job.error
    trials, _ = store.list_trials(job.id)
    complete = [t for t in trials if t.state is TrialState.complete]
    assert len(complete) == 2, [(t.state, t.error) for t in trials]
    if strategy in ("dass", "supertickets"):  # the search (supernet) trial and its child are timed alike
        assert sum(t.parent_id is None for t in complete) == 1
    for trial in complete:
        assert set(LATENCY) <= trial.metrics.keys(), (trial.number, sorted(trial.metrics))
        m = trial.metrics
        assert 0 < m["latency_ms"] <= m["latency_median_ms"], trial.number  # p10, then the median of the same calls
        assert m["latency_iqr_ms"] >= 0 and m["masked_latency_ms"] > 0
        assert {name for name, metric in METRICS.items() if metric.objective and name != "predicted_latency_ms"} <= m.keys()
        assert isinstance(m["nonzero_params"], int) and isinstance(m["flops"], int)
        detail = store.get_trial(trial.id)
        assert all(layer.kernel in ("dense", "csr", "shrunk") for layer in detail.layers)
        # The trial ending reports the last epoch with its own evaluation (BatchNorm recalibrated), on the
        # validation split; the test split is evaluated once, at the end, and recorded beside it.
        assert detail.history[-1].metrics["val_accuracy"] == m["val_accuracy"], trial.number
        assert detail.history[-1].metrics["val_loss"] == m["val_loss"], trial.number
        assert (m["accuracy"], m["loss"]) == (m["test_accuracy"], m["test_loss"]), trial.number
        assert not any({"accuracy", "loss", "test_accuracy"} & h.metrics.keys() for h in detail.history)
        assert detail.outputs["split"]["val"] > 0 and detail.outputs["split"]["val_seed"] == 0
    # The best trial is chosen on validation accuracy (the first objective) among the front.
    top = max(complete, key=lambda t: (t.metrics["val_accuracy"], -t.metrics["latency_median_ms"]))
    assert job.best_trial_id == top.id
    # Every one taught the latency predictor what it measured, but a DASS search trial: its supernet
    # mixes operations by its own α, which the predictor has no model for (it never predicts one either).
    taught = {t.id for t in complete if not (strategy == "dass" and t.parent_id is None)}
    assert {o.trial_id for o in store.latency_observations(job_id=job.id)} == taught


@pytest.mark.parametrize("strategy", list(JOBS))
def test_a_latency_median_objective_has_a_pareto_front_for_every_strategy(
    store: Store, finished: dict[str, str], settings: Settings, strategy: str
) -> None:
    headers = {"Authorization": f"Bearer {store.create_api_key('tester')}"}
    with TestClient(create_app(store, settings)) as client:
        front = client.get(f"/api/v1/jobs/{finished[strategy]}/pareto", headers=headers)
    assert front.status_code == 200
    items = front.json()["items"]
    assert items and all(t["state"] == "complete" and "latency_median_ms" in t["metrics"] for t in items)

"""The job runner on a real local Ray, with trainables that misbehave on purpose.

The trainables stand in for the trainer so that each failure mode is certain: a trial that
raises, one that ends without its final report, one that succeeds only on its second attempt.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from pydantic import BaseModel
from ray import tune

from nas import registry
from nas.cluster import Node
from nas.settings import Settings
from nas.strategies import WAIT, Strategy, TrialPlan
from nas.specs import JobSpec, JobStatus, Trial, TrialState
from nas.store import Store, make_engine, upgrade
from workers.dispatcher import Dispatcher
from workers.runner import JobRunner
from workers.trainable import EPOCH_METRICS, FINAL

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    # Ray's workers cannot import test modules; ship these trainables by value instead.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", data_dir=tmp_path / "data")


@pytest.fixture
def store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


def run_job(
    store: Store, settings: Settings, trainable: Callable[[dict[str, Any]], None], spec: dict[str, Any] | None = None,
    **budget: Any,
) -> str:
    spec = JobSpec.model_validate(
        {"search_space": {"name": "sparse_mlp"}, "dataset": {"name": "digits"},
         "budget": {"max_trials": 3, "max_concurrent": 2, **budget}, **(spec or {})}
    )
    job = store.create_job(spec, "tester")
    assert store.claim_job("test-runner", 60) == job.id
    JobRunner(store, settings, job.id, "test-runner", trainable=trainable).run()
    return job.id


def succeeds(config: dict[str, Any]) -> None:
    metrics = {"accuracy": 0.5, "loss": 1.0, "sparsity": 0.9}
    observation = {"target_key": "cpu-test", "predictor_id": "p", "measured_ms": 1.0 + config["number"]}
    tune.report({"epoch": 1, EPOCH_METRICS: metrics, **metrics})
    tune.report({**metrics, FINAL: {"metrics": metrics, "layers": [], "node_id": "n",
                                    "latency_observation": observation}, "model": b"weights"})  # fmt: skip


def raises(config: dict[str, Any]) -> None:
    raise RuntimeError(f"broken trial {config['number']}")


def ends_silently(config: dict[str, Any]) -> None:
    metrics = {"accuracy": 0.5}
    tune.report({"epoch": 1, EPOCH_METRICS: metrics, **metrics})


def fails_first_attempt(config: dict[str, Any]) -> None:
    marker = Path(config["data_dir"]) / f"attempted-{config['number']}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(1)  # the worker process dies, as on an OOM kill
    succeeds(config)


def hangs_first_attempt(config: dict[str, Any]) -> None:
    marker = Path(config["data_dir"]) / f"hung-{config['number']}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        time.sleep(3600)  # a deadlocked trial: alive, silent
    succeeds(config)


def test_a_job_of_good_trials_succeeds_with_every_trial_persisted(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, succeeds)
    job = store.get_job(job_id)
    assert job.status is JobStatus.succeeded and job.best_trial_id
    trials, _ = store.list_trials(job_id)
    assert [t.number for t in trials] == [0, 1, 2]
    for trial in trials:
        full = store.get_trial(trial.id)
        assert full.state is TrialState.complete and full.has_model and full.node_id == "n"
        assert [h.epoch for h in full.history] == [1]
        assert store.get_artifact(trial.id, "model", "safetensors").size_bytes == len(b"weights")
    # each trial's latency observation, sent with its result, is kept in the database
    observed = {o.trial_id: o.record["measured_ms"] for o in store.latency_observations("cpu-test", "p")}
    assert observed == {t.id: 1.0 + t.number for t in trials}


def test_a_job_whose_trials_all_fail_ends_failed_with_their_errors(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, raises, max_retries=0)
    job = store.get_job(job_id)
    assert job.status is JobStatus.failed
    assert "no trial completed" in job.error and "broken trial" in job.error
    trials, _ = store.list_trials(job_id)
    assert len(trials) == 3 and all(t.state is TrialState.failed and "broken trial" in t.error for t in trials)


def test_a_trial_that_ends_without_its_final_report_fails_and_the_job_ends(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, ends_silently)
    assert store.get_job(job_id).status is JobStatus.failed
    trials, _ = store.list_trials(job_id)
    assert {t.state for t in trials} == {TrialState.failed}
    assert all("final report" in t.error for t in trials)


def test_a_trial_whose_worker_dies_is_retried_once_and_the_job_succeeds(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, fails_first_attempt, max_retries=1)
    assert store.get_job(job_id).status is JobStatus.succeeded
    trials, _ = store.list_trials(job_id)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state is TrialState.complete and t.attempts == 2 for t in trials)


def test_a_trial_that_stalls_is_stopped_and_retried(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, hangs_first_attempt, max_trials=2, max_retries=1, trial_stall_s=3)
    assert store.get_job(job_id).status is JobStatus.succeeded
    trials, _ = store.list_trials(job_id)
    assert all(t.state is TrialState.complete and t.attempts == 2 for t in trials)


def test_a_trial_that_stalls_past_its_retries_fails_with_the_reason(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, hangs_first_attempt, max_trials=1, max_retries=0, trial_stall_s=3)
    assert store.get_job(job_id).status is JobStatus.failed
    (trial,) = store.list_trials(job_id)[0]
    assert trial.state is TrialState.failed and "trial_stall_s" in trial.error
    assert trial.heartbeat_at is not None


class ParentThenChild(Strategy):
    """Proposes a root, waits for it, then one child per root outcome: the shape of DASS and lottery chains."""

    class Params(BaseModel):
        pass

    def __init__(self, params: Any, space: Any, spec: Any) -> None:
        super().__init__(params, space, spec)
        self.asked = 0
        self.root: Trial | None = None

    def ask(self) -> TrialPlan | object | None:
        arch = {"depth": 1, "width_0": 32, "activation": "relu"}
        if self.asked == 0:
            self.asked = 1
            return TrialPlan(arch)
        if self.asked == 1 and self.root is None:
            return WAIT
        if self.asked == 1:
            self.asked = 2
            return TrialPlan(arch, parent_id=self.root.id)
        return None

    def tell(self, trial: Trial) -> None:
        if trial.parent_id is None:
            self.root = trial


def reports_parent(config: dict[str, Any]) -> None:
    """Succeeds with the parent's model size as a metric and its own trial number as an output."""
    time.sleep(1)  # the runner asks while the root runs, and must wait for it
    metrics = {"accuracy": 0.5, "loss": 1.0, "sparsity": 0.9, "parent_bytes": float(len(config["parent_model"] or b""))}
    tune.report({"epoch": 1, EPOCH_METRICS: metrics, **metrics})
    final = {"metrics": metrics, "layers": [], "node_id": "n", "outputs": {"number": config["number"]}}
    tune.report({**metrics, FINAL: final, "model": b"root-weights"})


def test_a_strategy_that_waits_gets_its_child_the_parent_model_and_outputs(store: Store, settings: Settings) -> None:
    registry.strategies.register("test_parent_then_child", ParentThenChild)
    job_id = run_job(store, settings, reports_parent, {"strategy": {"name": "test_parent_then_child"}}, max_trials=5)
    assert store.get_job(job_id).status is JobStatus.succeeded
    root, child = store.list_trials(job_id)[0]
    assert root.state is child.state is TrialState.complete
    assert child.parent_id == root.id and root.parent_id is None
    assert root.metrics["parent_bytes"] == 0 and child.metrics["parent_bytes"] == len(b"root-weights")
    assert root.outputs == {"number": 0} and child.outputs == {"number": 1}
    assert root.created_at < child.created_at and child.updated_at >= child.created_at


def test_candidates_over_a_constraint_are_infeasible_and_never_trained(store: Store, settings: Settings) -> None:
    space = {"name": "sparse_mlp", "params": {"min_depth": 1, "max_depth": 1, "width_choices": [16, 256]}}
    # 64 inputs, 10 classes: width 16 has 1,210 parameters, width 256 has 19,210.
    job_id = run_job(
        store, settings, succeeds, {"search_space": space, "constraints": {"max_params": 5000}}, max_trials=8
    )
    trials, _ = store.list_trials(job_id)
    assert len(trials) == 8
    by_width = {w: [t for t in trials if t.arch["width_0"] == w] for w in (16, 256)}
    assert by_width[16] and by_width[256]
    for trial in by_width[256]:
        assert trial.state is TrialState.infeasible and "max_params=5000" in trial.error
        assert trial.started_at is None and trial.attempts == 0 and trial.metrics["params"] == 19210
        assert trial.metrics["predicted_latency_ms"] > 0
    for trial in by_width[16]:
        assert trial.state is TrialState.complete and trial.metrics["params"] == 1210
        assert trial.metrics["predicted_latency_ms"] > 0 and trial.attempts == 1


def reports_its_resources(config: dict[str, Any]) -> None:
    """A trial that reports the CPUs and GPUs Ray gave its worker, and the device the trainer would train on."""
    from workers.trainable import allotted_device

    assigned = ray.get_runtime_context().get_assigned_resources()
    metrics = {"accuracy": 0.5, "assigned_cpus": assigned.get("CPU", 0.0), "assigned_gpus": assigned.get("GPU", 0.0),
               "on_cuda": float(allotted_device().type == "cuda")}  # fmt: skip
    tune.report({**metrics, FINAL: {"metrics": metrics, "layers": []}, "model": b"weights"})


def test_a_trial_runs_with_the_cpus_and_gpus_its_spec_names(store: Store, settings: Settings) -> None:
    job_id = run_job(store, settings, reports_its_resources, {"resources": {"cpus": 0.5}}, max_trials=1)
    (trial,), _ = store.list_trials(job_id)
    assert trial.state is TrialState.complete
    assert (trial.metrics["assigned_cpus"], trial.metrics["assigned_gpus"], trial.metrics["on_cuda"]) == (0.5, 0, 0)


def test_a_job_whose_trials_no_node_can_start_fails_when_claimed(store: Store, settings: Settings) -> None:
    """The local Ray has no GPU: the job fails at once with the reason, its trials never pending."""
    job_id = run_job(store, settings, succeeds, {"resources": {"gpus": 1}})
    job = store.get_job(job_id)
    assert job.status is JobStatus.failed and job.n_trials == 0
    assert job.error == ("its trials cannot start: no node of the cluster has a GPU (resources.gpus=1); "
                         "the cluster has: 1 node of 2 CPUs and no GPU")  # fmt: skip


def test_the_dispatcher_records_its_clusters_nodes(store: Store, settings: Settings) -> None:
    dispatcher = Dispatcher(store, settings, "resources-test", beat_s=0.2)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 30
        while store.cluster_nodes() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        nodes = store.cluster_nodes()
    finally:
        dispatcher.stop()
    assert nodes == [Node(ray.get_runtime_context().get_node_id(), 2.0, 0.0)]


def test_a_job_longer_than_one_tune_experiment_runs_as_several(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job of more trials than one Tune experiment starts (TRIALS_PER_FIT) goes on in the next one,
    from the store: every trial once, numbered in order, all complete."""
    import workers.runner

    monkeypatch.setattr(workers.runner, "TRIALS_PER_FIT", 3)
    job_id = run_job(store, settings, succeeds, max_trials=8)
    assert store.get_job(job_id).status is JobStatus.succeeded
    trials, _ = store.list_trials(job_id)
    assert [t.number for t in trials] == list(range(8))
    assert all(t.state is TrialState.complete and t.attempts == 1 for t in trials)

"""Cancelled means cancelled, and every trial keeps its log.

In the store (SQLite and PostgreSQL): a job's cancel request ends its queued trials ``cancelled``,
no trial starts after it and no trial is created after it, and a trial's log is kept size-capped.
On a real local Ray (marked ``ray``): a running job cancelled mid-trial leaves no trial ``failed``
or ``running``, none started after the request; the real trainable's log reaches the store, with
the traceback of a trial that failed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nas.errors import IllegalTransition, NotFound
from nas.settings import Settings
from nas.specs import JobSpec, JobStatus, TrialState
from nas.store import Principal, Store, make_engine, upgrade
from nas.store.tables import utcnow
from nas.trial_log import LOG_TAIL_BYTES

# -- the store ---------------------------------------------------------------------------------


def test_a_cancel_request_ends_queued_trials_cancelled_and_refuses_every_later_start(
    store: Store, make_spec: Any
) -> None:
    job = store.create_job(make_spec(), "alice")
    assert store.claim_job("runner", lease_s=30) == job.id
    running = store.create_trial(job.id, {"depth": 1})
    store.start_trial(running.id, attempt=1)
    queued = store.create_trial(job.id, {"depth": 2})

    store.request_cancel(job.id)

    ended = store.get_trial(queued.id)
    assert ended.state is TrialState.cancelled and ended.error and ended.finished_at is not None
    assert ended.started_at is None
    # The runner offering the queued trial to a worker now: the store refuses to start it.
    refused = store.start_trial(queued.id, attempt=1)
    assert refused.state is TrialState.cancelled and refused.started_at is None
    with pytest.raises(IllegalTransition, match="cancelled"):
        store.create_trial(job.id, {"depth": 3})
    # The running trial is the runner's to stop; it ends cancelled, not failed.
    assert store.get_trial(running.id).state is TrialState.running
    stopped = store.finish_trial(running.id, TrialState.cancelled, error="its job was cancelled", log="epoch 1\n")
    assert stopped.state is TrialState.cancelled
    trials, _ = store.list_trials(job.id)
    assert [t.state for t in trials] == [TrialState.cancelled, TrialState.cancelled]
    assert store.get_job(job.id).n_finished == 2
    assert store.count_trials_by_state()[TrialState.cancelled] == 2


def test_a_trial_queued_before_a_cancel_that_the_store_did_not_see_queued_is_still_refused(
    store: Store, make_spec: Any
) -> None:
    """The start that loses the race to the cancel request: its trial is cancelled at the start."""
    job = store.create_job(make_spec(), "alice")
    store.claim_job("runner", lease_s=30)
    trial = store.create_trial(job.id, {"depth": 1})
    store.request_cancel(job.id)
    assert store.get_trial(trial.id).state is TrialState.cancelled
    again = store.start_trial(trial.id, attempt=1)
    assert again.state is TrialState.cancelled and again.attempts == 0


def test_racing_starts_and_a_cancel_never_start_a_trial_after_the_cancel(store: Store, make_spec: Any) -> None:
    job = store.create_job(make_spec(), "alice")
    store.claim_job("runner", lease_s=30)
    trials = [store.create_trial(job.id, {"depth": n}) for n in range(8)]
    cancelled_at: list[Any] = []

    def cancel() -> None:
        store.request_cancel(job.id)
        cancelled_at.append(utcnow())

    threads = [threading.Thread(target=store.start_trial, args=(t.id, None, 1)) for t in trials]
    threads.insert(4, threading.Thread(target=cancel))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for trial in store.list_trials(job.id)[0]:
        assert trial.state in (TrialState.running, TrialState.cancelled)
        if trial.state is TrialState.running:
            assert trial.started_at <= cancelled_at[0]
        else:
            assert trial.started_at is None


def test_a_trial_log_is_stored_size_capped_and_only_its_owner_reads_it(store: Store, make_spec: Any) -> None:
    job = store.create_job(make_spec(), "alice")
    store.claim_job("runner", lease_s=30)
    short = store.create_trial(job.id, {"depth": 1})
    store.start_trial(short.id, attempt=1)
    assert store.trial_log(short.id) is None
    store.finish_trial(short.id, TrialState.failed, error="boom", log="epoch 1: accuracy 0.5\nTraceback ...\n")
    assert store.trial_log(short.id, Principal("alice")) == "epoch 1: accuracy 0.5\nTraceback ...\n"
    assert store.get_trial(short.id).has_log is True
    with pytest.raises(NotFound):
        store.trial_log(short.id, Principal("bob"))

    chatty = store.create_trial(job.id, {"depth": 2})
    store.start_trial(chatty.id, attempt=1)
    lines = "".join(f"line {n}\n" for n in range(50_000))
    store.finish_trial(chatty.id, TrialState.complete, metrics={"accuracy": 0.5}, log=lines)
    kept = store.trial_log(chatty.id)
    assert len(kept.encode()) <= LOG_TAIL_BYTES and kept.endswith("line 49999\n")
    assert "earlier lines dropped" in kept.splitlines()[0]
    unlogged = store.create_trial(job.id, {"depth": 3})
    listed = {t.id: t.has_log for t in store.list_trials(job.id)[0]}
    assert listed == {short.id: True, chatty.id: True, unlogged.id: False}


# -- the runner on Ray -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    # Ray's workers cannot import test modules; ship this module's trainables by value instead.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Workers read the data folder the trial names (an empty one here), not this process's NAS_DATA_DIR.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"NAS_DATA_DIR": ""}})  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture
def ray_store(tmp_path: Path) -> tuple[Store, Settings]:
    settings = Settings(home=tmp_path / "home", data_dir=tmp_path / "data")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine), settings


def reports_slowly(config: dict[str, Any]) -> None:
    """A trial that reports an epoch every 0.2 s for a minute: running when the job is cancelled."""
    from ray import tune

    from workers.trainable import EPOCH_METRICS

    for epoch in range(1, 300):
        metrics = {"accuracy": 0.1, "loss": 1.0}
        tune.report({"epoch": epoch, EPOCH_METRICS: metrics, **metrics})
        time.sleep(0.2)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.ray
def test_a_cancelled_running_job_ends_its_trials_cancelled_and_starts_none_after(
    local_ray: None, ray_store: tuple[Store, Settings]
) -> None:
    from workers.runner import JobRunner

    store, settings = ray_store
    spec = JobSpec.model_validate({"search_space": {"name": "sparse_mlp"}, "dataset": {"name": "digits"},
                                   "budget": {"max_trials": 20, "max_concurrent": 2}})  # fmt: skip
    job = store.create_job(spec, "tester")
    assert store.claim_job("test-runner", 60) == job.id
    runner = JobRunner(store, settings, job.id, "test-runner", trainable=reports_slowly)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        _wait(lambda: any(t.state is TrialState.running and store.get_trial(t.id).history
                          for t in store.list_trials(job.id)[0]), 120, "a running trial's first epoch")  # fmt: skip
        store.request_cancel(job.id)
        cancelled_at = utcnow()
    finally:
        thread.join(120)
    assert not thread.is_alive()

    finished = store.get_job(job.id)
    assert finished.status is JobStatus.cancelled
    trials, _ = store.list_trials(job.id)
    assert trials and len(trials) < 20
    assert all(t.state is TrialState.cancelled for t in trials), [(t.number, t.state, t.error) for t in trials]
    assert any(t.started_at is not None for t in trials)  # a trial was running when the cancel came
    late = [t.number for t in trials if t.started_at is not None and t.started_at > cancelled_at]
    assert late == [], f"trials {late} started after the cancel request"
    assert all(t.error for t in trials)  # each says why it ended


@pytest.mark.ray
def test_the_trainable_logs_reach_the_store_with_the_traceback_of_a_failure(
    local_ray: None, ray_store: tuple[Store, Settings], tmp_path: Path
) -> None:
    """The real trainable: a digits trial that completes, then an MNIST trial whose data is missing."""
    from workers.runner import JobRunner

    store, settings = ray_store
    ids = {}
    for dataset in ("digits", "mnist"):
        spec = JobSpec.model_validate({
            "search_space": {"name": "sparse_mlp"}, "dataset": {"name": dataset}, "training": {"epochs": 2},
            "budget": {"max_trials": 1, "max_concurrent": 1, "max_retries": 0},
        })  # fmt: skip
        job = store.create_job(spec, "tester")
        assert store.claim_job("test-runner", 60) == job.id
        JobRunner(store, settings, job.id, "test-runner").run()
        ids[dataset] = store.list_trials(job.id)[0][0]

    complete, failed = ids["digits"], ids["mnist"]
    assert complete.state is TrialState.complete and failed.state is TrialState.failed
    log = store.trial_log(complete.id)
    assert "trial 0 (attempt 1)" in log and "epoch 1:" in log and "trained: " in log
    failure = store.trial_log(failed.id)
    assert "trial 0 (attempt 1)" in failure  # what it logged before failing
    assert 'in train_trial' in failure and "in load_data" in failure  # the traceback's frames
    assert failure.rstrip().endswith(failed.error), (failure[-500:], failed.error)
    assert "\x1b[" not in failure  # Ray's colours are not kept

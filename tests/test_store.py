"""The store contract, run against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select

from nas.errors import IllegalTransition, NotFound
from nas.specs import Job, JobStatus, LayerInfo, TrialState
from nas.store import Artifact, Principal, Store, make_engine, upgrade
from nas.store.engine import MIGRATIONS, current_revision
from nas.store.store import hash_key
from nas.store.tables import ApiKeyRow, JobRow

ALICE = Principal("alice")
BOB = Principal("bob")
ADMIN = Principal("root", is_admin=True)


def _job(store: Store, make_spec: Any, owner: str = "alice", **overrides: Any) -> Job:
    return store.create_job(make_spec(**overrides), owner)


def _running_trial(store: Store, job_id: str, arch: dict[str, Any] | None = None) -> str:
    trial = store.create_trial(job_id, arch or {"depth": 1})
    store.start_trial(trial.id, node_id="node-1")
    return trial.id


def _assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None, "naive datetime"
    assert value.utcoffset() == timedelta(0), f"{value!r} is not in UTC"


# -- migrations --------------------------------------------------------------------------------


def test_migrations_reach_head_and_are_idempotent(store: Store) -> None:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    assert current_revision(store.engine) == head
    upgrade(store.engine)  # a second upgrade is a no-op
    assert current_revision(store.engine) == head
    tables = set(inspect(store.engine).get_table_names())
    assert {"api_keys", "jobs", "trials", "trial_epochs", "trial_layers", "artifacts"} <= tables


def test_migrations_build_exactly_the_tables_the_code_declares(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from nas.store.tables import Base

    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


# -- API keys ----------------------------------------------------------------------------------


def test_api_key_only_hash_is_stored(store: Store) -> None:
    key = store.create_api_key("alice")
    assert key.startswith("nas_") and len(key) > 30
    with store.engine.connect() as connection:
        rows = connection.execute(select(ApiKeyRow.owner, ApiKeyRow.key_hash, ApiKeyRow.is_admin)).all()
    assert rows == [("alice", hash_key(key), False)]
    assert key not in rows[0].key_hash


def test_authenticate_right_and_wrong_keys(store: Store) -> None:
    alice = store.create_api_key("alice")
    root = store.create_api_key("root", is_admin=True)
    assert alice != root
    assert store.authenticate(alice) == Principal("alice", is_admin=False)
    assert store.authenticate(root) == Principal("root", is_admin=True)
    assert store.authenticate(alice + "x") is None
    assert store.authenticate("") is None
    assert store.authenticate(hash_key(alice)) is None  # the stored hash is not a key


def test_keys_are_listed_used_and_revoked(store: Store) -> None:
    alice, spare, bob = store.create_api_key("alice"), store.create_api_key("alice"), store.create_api_key("bob")
    principal = store.authenticate(alice)
    assert principal is not None and principal.key_id is not None
    store.note_api_key_use(principal.key_id)
    listed = {key.id: key for key in store.list_api_keys()}
    assert [key.owner for key in listed.values()] == ["alice", "alice", "bob"]
    assert listed[principal.key_id].last_used_at is not None and not listed[principal.key_id].revoked
    assert [key.owner for key in store.list_api_keys("bob")] == ["bob"]

    (revoked,) = store.revoke_api_keys(key_id=principal.key_id)
    assert revoked.revoked and revoked.revoked_at is not None
    assert store.authenticate(alice) is None and store.authenticate(spare) is not None
    assert [key.revoked for key in store.revoke_api_keys(owner="alice")] == [True, True]
    assert store.authenticate(spare) is None and store.authenticate(bob) is not None
    bob_id = store.list_api_keys("bob")[0].id
    with pytest.raises(NotFound):
        store.revoke_api_keys(key_id=bob_id, owner="alice")  # only within that owner's keys
    with pytest.raises(NotFound):
        store.revoke_api_keys(owner="nobody")
    assert store.api_key(bob_id) is not None and not store.api_key(bob_id).revoked  # type: ignore[union-attr]


def test_api_key_needs_an_owner(store: Store) -> None:
    with pytest.raises(ValueError):
        store.create_api_key("  ")


# -- jobs --------------------------------------------------------------------------------------


def test_create_and_get_job(store: Store, make_spec: Any) -> None:
    spec = make_spec(name="my-search")
    job = store.create_job(spec, "alice")
    assert job.status is JobStatus.queued
    assert job.name == "my-search" and job.owner == "alice"
    assert job.spec == spec.model_dump(mode="json")
    assert job.spec["training"]["epochs"] == 3  # defaults filled in
    assert (job.n_trials, job.n_complete, job.n_finished) == (0, 0, 0)
    assert job.started_at is None and job.finished_at is None and job.best_trial_id is None
    _assert_utc(job.created_at)
    assert abs(job.created_at - datetime.now(timezone.utc)) < timedelta(minutes=5)

    again = store.get_job(job.id, ALICE)
    assert again == job
    assert store.get_job(job.id) == job  # no viewer: internal access


def test_job_ownership(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec, "alice")
    with pytest.raises(NotFound):
        store.get_job(job.id, BOB)
    with pytest.raises(NotFound):
        store.request_cancel(job.id, BOB)
    with pytest.raises(NotFound):
        store.list_trials(job.id, BOB)
    with pytest.raises(NotFound):
        store.get_job("0" * 32, ALICE)
    assert store.get_job(job.id, ADMIN).id == job.id
    assert store.get_job(job.id).status is JobStatus.queued  # bob's attempt changed nothing


def test_list_jobs_owner_admin_and_status(store: Store, make_spec: Any) -> None:
    a1 = _job(store, make_spec, "alice")
    b1 = _job(store, make_spec, "bob")
    a2 = _job(store, make_spec, "alice")
    store.request_cancel(a1.id, ALICE)

    jobs, cursor = store.list_jobs(ALICE)
    assert [j.id for j in jobs] == [a2.id, a1.id]  # newest first
    assert cursor is None
    assert [j.id for j in store.list_jobs(BOB)[0]] == [b1.id]
    assert [j.id for j in store.list_jobs(ADMIN)[0]] == [a2.id, b1.id, a1.id]

    cancelled, _ = store.list_jobs(ALICE, status=JobStatus.cancelled)
    assert [j.id for j in cancelled] == [a1.id]
    queued, _ = store.list_jobs(ADMIN, status=JobStatus.queued)
    assert [j.id for j in queued] == [a2.id, b1.id]
    assert store.list_jobs(ALICE, status=JobStatus.running) == ([], None)


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 8])
def test_list_jobs_cursor_pagination(store: Store, make_spec: Any, limit: int) -> None:
    mine = [_job(store, make_spec, "alice", name=f"job-{i}").id for i in range(7)]
    _job(store, make_spec, "bob")  # interleaved jobs of another owner are not listed
    mine.append(_job(store, make_spec, "alice").id)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = store.list_jobs(ALICE, limit=limit, cursor=cursor)
        pages += 1
        assert len(page) <= limit
        seen += [j.id for j in page]
        if cursor is None:
            break
        assert len(page) == limit
    assert seen == list(reversed(mine))  # no duplicates, no gaps, newest first
    assert pages == max(1, -(-len(mine) // limit))


def test_list_jobs_counts_trials(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    done = _running_trial(store, job.id)
    store.finish_trial(done, TrialState.complete, metrics={"accuracy": 0.9})
    store.create_trial(job.id, {"depth": 2})
    store.create_trial(job.id, {"depth": 3}, state=TrialState.infeasible, error="too slow")
    listed = store.list_jobs(ALICE)[0][0]
    assert (listed.n_trials, listed.n_complete, listed.n_finished) == (3, 1, 2)
    got = store.get_job(job.id)
    assert (got.n_trials, got.n_complete, got.n_finished) == (3, 1, 2)


# -- job state machine -------------------------------------------------------------------------


def test_cancel_queued_job_is_immediate(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    cancelled = store.request_cancel(job.id, ALICE)
    assert cancelled.status is JobStatus.cancelled
    _assert_utc(cancelled.finished_at)
    assert cancelled.error
    assert store.get_job(job.id).status is JobStatus.cancelled
    assert store.claim_job("runner", lease_s=30) is None  # a cancelled job is never claimed


def test_cancel_running_job_requests_it(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    assert store.claim_job("runner", lease_s=30) == job.id
    assert store.cancel_requested(job.id) is False
    answer = store.request_cancel(job.id, ALICE)
    assert answer.status is JobStatus.running
    assert answer.finished_at is None
    assert store.cancel_requested(job.id) is True
    assert store.get_job(job.id).status is JobStatus.running
    finished = store.finish_job(job.id, JobStatus.cancelled, error="cancelled by the user")
    assert finished.status is JobStatus.cancelled and finished.error == "cancelled by the user"


@pytest.mark.parametrize("final", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled])
def test_cancel_finished_job_is_illegal(store: Store, make_spec: Any, final: JobStatus) -> None:
    job = _job(store, make_spec)
    store.claim_job("runner", lease_s=30)
    store.finish_job(job.id, final)
    with pytest.raises(IllegalTransition):
        store.request_cancel(job.id, ALICE)
    assert store.get_job(job.id).status is final


def test_finish_job_transitions(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    with pytest.raises(IllegalTransition):
        store.finish_job(job.id, JobStatus.succeeded)  # queued -> succeeded skips running
    with pytest.raises(IllegalTransition):
        store.finish_job(job.id, JobStatus.queued)
    assert store.get_job(job.id).status is JobStatus.queued

    store.claim_job("runner", lease_s=30)
    with pytest.raises(IllegalTransition):
        store.finish_job(job.id, JobStatus.running)
    done = store.finish_job(job.id, JobStatus.succeeded)
    assert done.status is JobStatus.succeeded and done.error is None
    _assert_utc(done.started_at)
    _assert_utc(done.finished_at)
    assert done.finished_at >= done.started_at
    for status in set(JobStatus) - {JobStatus.succeeded}:
        with pytest.raises(IllegalTransition):
            store.finish_job(job.id, status)
    assert store.finish_job(job.id, JobStatus.succeeded).finished_at == done.finished_at  # a retry: no-op
    with pytest.raises(IllegalTransition):
        store.finish_job(job.id, JobStatus.succeeded, error="a different outcome")
    assert store.get_job(job.id).status is JobStatus.succeeded

    queued = _job(store, make_spec)
    failed = store.finish_job(queued.id, JobStatus.failed, error="spec refers to a missing dataset")
    assert failed.status is JobStatus.failed and failed.error == "spec refers to a missing dataset"

    with pytest.raises(NotFound):
        store.finish_job("f" * 32, JobStatus.failed)


def test_set_best_trial(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    trial = store.create_trial(job.id, {"depth": 1})
    store.set_best_trial(job.id, trial.id)
    assert store.get_job(job.id).best_trial_id == trial.id


# -- claiming and leases -----------------------------------------------------------------------


def test_claim_job_takes_oldest_queued(store: Store, make_spec: Any) -> None:
    assert store.claim_job("r1", lease_s=30) is None
    first = _job(store, make_spec)
    second = _job(store, make_spec, "bob")
    before = datetime.now(timezone.utc)
    assert store.claim_job("r1", lease_s=30) == first.id
    claimed = store.get_job(first.id)
    assert claimed.status is JobStatus.running
    _assert_utc(claimed.started_at)
    assert claimed.started_at >= before - timedelta(seconds=5)

    with store.engine.connect() as connection:
        owner, expires = connection.execute(
            select(JobRow.lease_owner, JobRow.lease_expires_at).where(JobRow.id == first.id)
        ).one()
    assert owner == "r1"
    _assert_utc(expires)
    assert timedelta(seconds=20) < expires - claimed.started_at <= timedelta(seconds=31)

    assert store.claim_job("r2", lease_s=30) == second.id  # the first one's lease is valid
    assert store.claim_job("r3", lease_s=30) is None


def test_expired_lease_is_claimable(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    assert store.claim_job("r1", lease_s=0.05) == job.id
    time.sleep(0.3)
    assert store.claim_job("r2", lease_s=30) == job.id
    assert store.get_job(job.id).status is JobStatus.running
    assert store.renew_lease(job.id, "r1", 30) is False  # r1 lost it
    assert store.renew_lease(job.id, "r2", 30) is True
    assert store.claim_job("r1", lease_s=30) is None


def test_renew_and_release_lease(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    assert store.claim_job("r1", lease_s=0.2) == job.id
    assert store.renew_lease(job.id, "intruder", 30) is False
    assert store.renew_lease(job.id, "r1", 30) is True
    time.sleep(0.4)
    assert store.claim_job("r2", lease_s=30) is None  # renewed: still r1's

    store.release_lease(job.id, "intruder")  # not the holder: no effect
    assert store.claim_job("r2", lease_s=30) is None
    store.release_lease(job.id, "r1")
    assert store.claim_job("r2", lease_s=30) == job.id
    assert store.renew_lease(job.id, "r1", 30) is False

    store.finish_job(job.id, JobStatus.succeeded)
    assert store.renew_lease(job.id, "r2", 30) is False  # a finished job holds no lease
    assert store.claim_job("r3", lease_s=0) is None


def test_concurrent_claims_never_share_a_job(store: Store, make_spec: Any) -> None:
    jobs = {_job(store, make_spec, name=f"j{i}").id for i in range(8)}
    barrier = threading.Barrier(6)

    def runner(index: int) -> list[str]:
        barrier.wait()
        claimed = []
        while (job_id := store.claim_job(f"runner-{index}", lease_s=60)) is not None:
            claimed.append(job_id)
        return claimed

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(runner, range(6)))
    flat = [job_id for claimed in results for job_id in claimed]
    assert len(flat) == len(set(flat)), "a job was claimed twice"
    assert set(flat) == jobs
    assert all(store.get_job(j).status is JobStatus.running for j in jobs)


# -- trials ------------------------------------------------------------------------------------


def test_trial_numbers_are_sequential(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    other = _job(store, make_spec)
    trials = [store.create_trial(job.id, {"depth": i % 3, "width": 32}) for i in range(5)]
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert len({t.id for t in trials}) == 5
    assert store.create_trial(other.id, {"depth": 1}).number == 0  # numbering is per job
    t = trials[0]
    assert t.job_id == job.id and t.state is TrialState.queued and t.attempts == 0
    assert t.arch == {"depth": 0, "width": 32}
    _assert_utc(t.created_at)
    assert t.started_at is None and t.finished_at is None
    child = store.create_trial(job.id, {"depth": 2}, parent_id=t.id)
    assert child.parent_id == t.id and child.number == 5
    with pytest.raises(NotFound):
        store.create_trial("0" * 32, {"depth": 1})


def test_concurrent_create_trial_has_no_duplicates_or_gaps(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    threads, per_thread = 4, 25
    barrier = threading.Barrier(threads)

    def create(index: int) -> list[int]:
        barrier.wait()
        return [store.create_trial(job.id, {"thread": index, "i": i}).number for i in range(per_thread)]

    with ThreadPoolExecutor(threads) as pool:
        numbers = [n for chunk in pool.map(create, range(threads)) for n in chunk]
    assert sorted(numbers) == list(range(threads * per_thread))
    listed, _ = store.list_trials(job.id)
    assert [t.number for t in listed] == list(range(threads * per_thread))
    assert store.create_trial(job.id, {"after": True}).number == threads * per_thread


def test_trial_legal_path(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    trial = store.create_trial(job.id, {"depth": 1})
    running = store.start_trial(trial.id, node_id="node-7")
    assert running.state is TrialState.running
    assert running.attempts == 1 and running.node_id == "node-7"
    _assert_utc(running.started_at)
    done = store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": 0.93, "loss": 0.2})
    assert done.state is TrialState.complete
    assert done.metrics == {"accuracy": 0.93, "loss": 0.2}
    assert done.error is None
    _assert_utc(done.finished_at)
    assert done.finished_at >= done.started_at
    assert store.get_trial(trial.id, ALICE).metrics == {"accuracy": 0.93, "loss": 0.2}


@pytest.mark.parametrize("final", [TrialState.pruned, TrialState.failed])
def test_running_trial_can_end_pruned_or_failed(store: Store, make_spec: Any, final: TrialState) -> None:
    job = _job(store, make_spec)
    trial_id = _running_trial(store, job.id)
    ended = store.finish_trial(trial_id, final, metrics={"accuracy": 0.5}, error="stopped")
    assert ended.state is final and ended.error == "stopped"


def test_queued_trial_can_be_infeasible_or_failed(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    a = store.create_trial(job.id, {"depth": 1})
    b = store.create_trial(job.id, {"depth": 2})
    assert store.finish_trial(a.id, TrialState.infeasible, error="over budget").state is TrialState.infeasible
    assert store.finish_trial(b.id, TrialState.failed, error="bad arch").state is TrialState.failed
    born_final = store.create_trial(job.id, {"depth": 3}, state=TrialState.infeasible, error="too big")
    assert born_final.state is TrialState.infeasible
    _assert_utc(born_final.finished_at)


def test_illegal_trial_transitions(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    queued = store.create_trial(job.id, {"depth": 1})
    with pytest.raises(IllegalTransition):
        store.finish_trial(queued.id, TrialState.complete)  # queued -> complete
    with pytest.raises(IllegalTransition):
        store.finish_trial(queued.id, TrialState.pruned)
    with pytest.raises(IllegalTransition):
        store.requeue_trial(queued.id)  # queued -> queued
    with pytest.raises(IllegalTransition):
        store.report_epoch(queued.id, 0, {"accuracy": 0.1})  # only running trials report
    with pytest.raises(ValueError):
        store.finish_trial(queued.id, TrialState.running)  # not a final state
    assert store.get_trial(queued.id).state is TrialState.queued

    store.start_trial(queued.id)
    with pytest.raises(IllegalTransition):
        store.start_trial(queued.id)  # running -> running
    store.finish_trial(queued.id, TrialState.complete, metrics={"accuracy": 0.8})

    for action in (
        lambda: store.start_trial(queued.id),  # complete -> running
        lambda: store.requeue_trial(queued.id),
        lambda: store.finish_trial(queued.id, TrialState.failed),
        lambda: store.finish_trial(queued.id, TrialState.complete, metrics={"accuracy": 0.0}),
        lambda: store.report_epoch(queued.id, 5, {"accuracy": 0.0}),
    ):
        with pytest.raises(IllegalTransition):
            action()
    final = store.get_trial(queued.id)
    assert final.state is TrialState.complete
    assert final.metrics == {"accuracy": 0.8}
    assert final.history == []

    for missing in (
        lambda: store.start_trial("0" * 32),
        lambda: store.report_epoch("0" * 32, 0, {}),
        lambda: store.finish_trial("0" * 32, TrialState.failed),
        lambda: store.get_trial("0" * 32),
    ):
        with pytest.raises(NotFound):
            missing()


def test_requeue_counts_attempts(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    trial_id = _running_trial(store, job.id)
    requeued = store.requeue_trial(trial_id, error="worker died")
    assert requeued.state is TrialState.queued
    assert requeued.attempts == 1 and requeued.error == "worker died" and requeued.node_id is None
    assert store.start_trial(trial_id, node_id="n2").attempts == 2

    graceful = store.requeue_trial(trial_id, error="server stopping", count_attempt=False)
    assert graceful.attempts == 1  # the interrupted attempt is not spent
    assert store.start_trial(trial_id).attempts == 2
    assert store.finish_trial(trial_id, TrialState.complete, metrics={"accuracy": 1.0}).attempts == 2


def test_report_epoch_history_in_order(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    trial_id = _running_trial(store, job.id)
    for epoch in range(4):
        store.report_epoch(trial_id, epoch, {"accuracy": 0.5 + epoch / 10, "loss": 1.0 - epoch / 10})
    history = store.get_trial(trial_id, ALICE).history
    assert [h.epoch for h in history] == [0, 1, 2, 3]
    assert history[2].metrics == {"accuracy": pytest.approx(0.7), "loss": pytest.approx(0.8)}


def test_start_trial_clears_old_history(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    trial_id = _running_trial(store, job.id)
    store.report_epoch(trial_id, 0, {"accuracy": 0.1})
    store.report_epoch(trial_id, 1, {"accuracy": 0.2})
    store.requeue_trial(trial_id, error="preempted")
    assert len(store.get_trial(trial_id).history) == 2  # kept while queued
    store.start_trial(trial_id)
    assert store.get_trial(trial_id).history == []
    store.report_epoch(trial_id, 0, {"accuracy": 0.3})  # the same epoch number again is fine
    assert [(h.epoch, h.metrics) for h in store.get_trial(trial_id).history] == [(0, {"accuracy": 0.3})]


def test_finish_trial_stores_layers_in_order(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    trial_id = _running_trial(store, job.id)
    layers = [
        LayerInfo(name="fc3", shape=[10, 64], density=0.5, pattern="unstructured"),
        LayerInfo(name="fc1", shape=[256, 64], density=0.1, pattern="unstructured"),
        LayerInfo(name="fc2", shape=[64, 256], density=0.5, pattern="2:4"),
    ]
    store.finish_trial(trial_id, TrialState.complete, metrics={"accuracy": 0.9}, layers=layers)
    got = store.get_trial(trial_id, ADMIN)
    assert got.layers == layers  # insertion order, not name order
    # list_trials does not load the per-layer and per-epoch details
    assert store.list_trials(job.id)[0][0].layers == []


def test_list_trials_state_filter_and_cursor(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    ids = [store.create_trial(job.id, {"i": i}).id for i in range(7)]
    for trial_id in ids[::2]:  # 0, 2, 4, 6 complete
        store.start_trial(trial_id)
        store.finish_trial(trial_id, TrialState.complete, metrics={"accuracy": 0.5})
    complete, cursor = store.list_trials(job.id, ALICE, state=TrialState.complete)
    assert [t.number for t in complete] == [0, 2, 4, 6] and cursor is None
    queued, _ = store.list_trials(job.id, ALICE, state=TrialState.queued)
    assert [t.number for t in queued] == [1, 3, 5]

    seen: list[int] = []
    cursor = None
    while True:
        page, cursor = store.list_trials(job.id, ALICE, limit=3, cursor=cursor)
        seen += [t.number for t in page]
        if cursor is None:
            break
        assert len(page) == 3
    assert seen == list(range(7))

    page, cursor = store.list_trials(job.id, ALICE, state=TrialState.complete, limit=2)
    assert [t.number for t in page] == [0, 2]
    page, cursor = store.list_trials(job.id, ALICE, state=TrialState.complete, limit=2, cursor=cursor)
    assert [t.number for t in page] == [4, 6] and cursor is None


# -- artifacts ---------------------------------------------------------------------------------


def test_artifacts(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    trial_id = _running_trial(store, job.id)
    store.finish_trial(trial_id, TrialState.complete, metrics={"accuracy": 0.9})
    with pytest.raises(NotFound):
        store.get_artifact(trial_id, "model", "safetensors", ALICE)
    assert store.get_trial(trial_id).has_model is False

    artifact = Artifact(trial_id, "model", "safetensors", f"{job.id}/{trial_id}.safetensors", 1234, "a" * 64)
    store.add_artifact(artifact)
    assert store.get_artifact(trial_id, "model", "safetensors", ALICE) == artifact
    assert store.get_artifact(trial_id, "model", "safetensors", ADMIN) == artifact
    assert store.get_artifact(trial_id, "model", "safetensors") == artifact
    with pytest.raises(NotFound):
        store.get_artifact(trial_id, "model", "safetensors", BOB)
    with pytest.raises(NotFound):
        store.get_artifact(trial_id, "model", "onnx", ALICE)
    with pytest.raises(NotFound):
        store.get_artifact("0" * 32, "model", "safetensors", ALICE)
    assert store.get_trial(trial_id).has_model is True
    assert store.list_trials(job.id)[0][0].has_model is True

    # adding the same kind and format again replaces the record
    replacement = Artifact(trial_id, "model", "safetensors", f"{job.id}/{trial_id}-v2.safetensors", 99, "b" * 64)
    store.add_artifact(replacement)
    assert store.get_artifact(trial_id, "model", "safetensors") == replacement
    onnx = Artifact(trial_id, "model", "onnx", f"{job.id}/{trial_id}.onnx", 5, "c" * 64)
    store.add_artifact(onnx)
    assert store.get_artifact(trial_id, "model", "onnx") == onnx
    assert store.get_artifact(trial_id, "model", "safetensors") == replacement


# -- latency observations ----------------------------------------------------------------------


def _observation(target_key: str, predictor_id: str, measured_ms: float) -> dict[str, Any]:
    features = {"log_sum_ms": 0.1, "log_module_calls": 1.0, "log_functional_calls": 0.0,
                "log_peak_elements": 5.0, "log_params": 8.0}  # fmt: skip
    return {"target_key": target_key, "predictor_id": predictor_id, "features": features, "sum_ms": 1.1,
            "predicted_ms": 1.2, "measured_ms": measured_ms, "time": 1.0}  # fmt: skip


def test_latency_observations_are_kept_listed_and_versioned(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec)
    trial_id = _running_trial(store, job.id)
    assert store.latency_observation_revision("cpu-a", "p1") == (0, 0)
    store.add_latency_observation(_observation("cpu-a", "p1", 2.0), job.id, trial_id)
    store.add_latency_observation(_observation("cpu-a", "p1", 9.0), job.id, trial_id)  # the same trial again: no-op
    store.add_latency_observation(_observation("cpu-a", "p2", 3.0))  # another predictor, no trial
    store.add_latency_observation(_observation("cpu-b", "p1", 4.0))  # another machine
    store.add_latency_observation(_observation("cpu-a", "p1", 5.0))
    first = store.latency_observation_revision("cpu-a", "p1")
    assert first[0] == 2

    mine = store.latency_observations("cpu-a", "p1")
    assert [o.record["measured_ms"] for o in mine] == [2.0, 5.0]  # oldest first
    assert (mine[0].job_id, mine[0].trial_id, mine[1].trial_id) == (job.id, trial_id, None)
    assert mine[0].record == _observation("cpu-a", "p1", 2.0)
    _assert_utc(mine[0].created_at)
    assert [o.record["measured_ms"] for o in store.latency_observations("cpu-a", "p1", limit=1)] == [5.0]
    assert [o.record["measured_ms"] for o in store.latency_observations(job_id=job.id)] == [2.0]
    assert len(store.latency_observations()) == 4

    store.add_latency_observation(_observation("cpu-a", "p1", 6.0))
    assert store.latency_observation_revision("cpu-a", "p1") != first
    assert store.latency_observation_revision("cpu-b", "p1")[0] == 1


def test_other_owner_cannot_see_trials(store: Store, make_spec: Any) -> None:
    job = _job(store, make_spec, "alice")
    trial = store.create_trial(job.id, {"depth": 1})
    with pytest.raises(NotFound):
        store.get_trial(trial.id, BOB)
    assert store.get_trial(trial.id, ADMIN).id == trial.id
    assert store.get_trial(trial.id, ALICE).id == trial.id


# -- time --------------------------------------------------------------------------------------


def test_datetimes_are_utc_whatever_the_session_zone(
    engine_url: str, store: Store, make_spec: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(store, make_spec)
    trial_id = _running_trial(store, job.id)
    store.claim_job("r", lease_s=30)
    store.finish_trial(trial_id, TrialState.complete, metrics={"accuracy": 0.5})
    # A connection whose session time zone is not UTC (PostgreSQL honours PGTZ) must still
    # hand back UTC datetimes.
    monkeypatch.setenv("PGTZ", "America/New_York")
    other = make_engine(engine_url)
    try:
        reader = Store(other)
        got = reader.get_job(job.id)
        for value in (got.created_at, got.started_at):
            _assert_utc(value)
        trial = reader.get_trial(trial_id)
        for value in (trial.created_at, trial.started_at, trial.finished_at):
            _assert_utc(value)
        assert got.created_at == store.get_job(job.id).created_at
    finally:
        other.dispose()


def test_non_finite_metrics_are_left_out_instead_of_breaking_the_write(store: Store, make_spec: Any) -> None:
    job = store.create_job(make_spec(), "alice")
    trial = store.create_trial(job.id, {"hidden": [8]})
    store.start_trial(trial.id)
    store.report_epoch(trial.id, 1, {"loss": float("nan"), "accuracy": 0.1})
    done = store.finish_trial(trial.id, TrialState.complete, {"loss": float("inf"), "accuracy": 0.1})
    assert done.metrics == {"accuracy": 0.1}
    assert store.get_trial(trial.id).history[0].metrics == {"accuracy": 0.1}

"""Lost PostgreSQL connections: the store retries what is safe to retry and nothing else.

Faults are real: the backend serving the store's connection is terminated with
``pg_terminate_backend`` at a chosen moment (before a statement, or just before ``COMMIT``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import DBAPIError

from nas.errors import IllegalTransition
from nas.specs import JobStatus, TrialState
from nas.store import Store
from nas.store.tables import JobRow
from tests.fixtures_store import _admin_connect, _truncate

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(pg_engine: Engine) -> Store:
    _truncate(pg_engine)
    return Store(pg_engine)


@contextmanager
def cut_connection(engine: Engine, when: str, statement: str = "") -> Iterator[list[int]]:
    """Terminate the backend of the connection in use once: at the first statement containing
    ``statement`` (``when="before_cursor_execute"``) or just before ``COMMIT`` (``when="commit"``)."""
    cuts: list[int] = []

    def cut(conn: Any, *args: Any) -> None:
        if cuts or (when == "before_cursor_execute" and statement not in args[1]):
            return
        pid = conn.connection.dbapi_connection.info.backend_pid
        with _admin_connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        cuts.append(pid)

    event.listen(engine, when, cut)
    try:
        yield cuts
    finally:
        event.remove(engine, when, cut)


def _running_trial(store: Store, make_spec: Any) -> str:
    job = store.create_job(make_spec(), "alice")
    store.claim_job("runner", lease_s=30)
    trial = store.create_trial(job.id, {"depth": 1})
    store.start_trial(trial.id, None, 1)
    return trial.id


def test_a_write_cut_mid_transaction_is_retried(pg_store: Store, pg_engine: Engine, make_spec: Any) -> None:
    trial_id = _running_trial(pg_store, make_spec)
    with cut_connection(pg_engine, "before_cursor_execute", "UPDATE trials") as cuts:
        done = pg_store.finish_trial(trial_id, TrialState.complete, metrics={"accuracy": 0.9})
    assert cuts and done.state is TrialState.complete
    assert pg_store.get_trial(trial_id).metrics == {"accuracy": 0.9}


def test_a_read_cut_mid_query_is_retried(pg_store: Store, pg_engine: Engine, make_spec: Any) -> None:
    job = pg_store.create_job(make_spec(), "alice")
    with cut_connection(pg_engine, "before_cursor_execute", "FROM jobs") as cuts:
        assert pg_store.get_job(job.id).id == job.id
    assert cuts


def test_an_idempotent_write_cut_at_commit_is_retried(pg_store: Store, pg_engine: Engine, make_spec: Any) -> None:
    trial_id = _running_trial(pg_store, make_spec)
    with cut_connection(pg_engine, "commit") as cuts:
        pg_store.report_epoch(trial_id, 1, {"accuracy": 0.5})
    assert cuts
    assert [h.epoch for h in pg_store.get_trial(trial_id).history] == [1]


def test_a_non_idempotent_write_cut_at_commit_is_not_retried(
    pg_store: Store, pg_engine: Engine, make_spec: Any
) -> None:
    with cut_connection(pg_engine, "commit") as cuts, pytest.raises(DBAPIError):
        pg_store.create_job(make_spec(), "alice")
    assert cuts
    with pg_engine.connect() as connection:
        assert connection.execute(select(JobRow.id)).all() == []  # COMMIT never reached the server


def test_the_runners_writes_repeated_with_the_same_outcome_are_no_ops(pg_store: Store, make_spec: Any) -> None:
    """What a retry after a commit that did land does; anything else stays an illegal transition."""
    trial_id = _running_trial(pg_store, make_spec)
    assert pg_store.start_trial(trial_id, None, 1).attempts == 1
    pg_store.report_epoch(trial_id, 1, {"accuracy": 0.5})
    pg_store.report_epoch(trial_id, 1, {"accuracy": 0.5})
    requeued = pg_store.requeue_trial(trial_id, "worker died")
    assert pg_store.requeue_trial(trial_id, "worker died") == requeued
    pg_store.start_trial(trial_id, None, 2)
    done = pg_store.finish_trial(trial_id, TrialState.complete, metrics={"accuracy": 0.9})
    assert pg_store.finish_trial(trial_id, TrialState.complete, metrics={"accuracy": 0.9}) == done
    trial = pg_store.get_trial(trial_id)
    assert trial.attempts == 2 and trial.history == [] and trial.heartbeat_at is not None
    with pytest.raises(IllegalTransition):
        pg_store.finish_trial(trial_id, TrialState.failed, error="other outcome")
    job_id = trial.job_id
    pg_store.finish_job(job_id, JobStatus.succeeded)
    assert pg_store.finish_job(job_id, JobStatus.succeeded).status is JobStatus.succeeded

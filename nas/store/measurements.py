"""Targets, their measurement agents, and the measurement tasks agents lease: the store's side of
latency on a user's own hardware.

A measurement task is held the way a trial is: ``queued`` → ``leased`` → ``done`` | ``failed``,
with a lease that the agent renews while it times the model. An agent that dies (SIGKILL, power,
network) stops renewing; once its lease has expired the task is leased again to another agent of
the same target, up to :data:`MAX_ATTEMPTS` leases. A result is taken once: a second report of a
finished task changes nothing, so no model is measured twice into a trial.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select

from nas.errors import IllegalTransition, NotFound
from nas.safe_text import check_printable
from nas.store.retry import retrying
from nas.store.tables import (
    AgentRow,
    CalibrationRow,
    MeasurementTaskRow,
    TargetPredictorRow,
    TargetRow,
    utcnow,
)

if TYPE_CHECKING:
    from nas.store.store import Principal, Store

LEASE_S = 30.0
"""How long a lease lasts without a heartbeat; agents renew it every third of this."""
OFFLINE_AFTER_S = 3 * LEASE_S
"""An agent silent this long is shown offline."""
MAX_ATTEMPTS = 3
"""Leases of one task before it fails: a model that kills every agent that times it must not go round forever."""
QUEUED, LEASED, DONE, FAILED = "queued", "leased", "done", "failed"


class LeaseLost(IllegalTransition):
    """The lease named is not the task's lease any more (it expired and another agent holds the task)."""


@dataclass(frozen=True)
class AgentRecord:
    id: str
    target_id: str
    target: str
    owner: str
    key_id: int
    name: str
    hardware: dict[str, Any]
    runtimes: list[dict[str, Any]]
    concurrency: int
    registered_at: datetime
    last_seen_at: datetime
    measurements_done: int
    leased: int = 0

    @property
    def online(self) -> bool:
        return (utcnow() - self.last_seen_at).total_seconds() < OFFLINE_AFTER_S

    def runtime_names(self) -> list[str]:
        return [str(r.get("name")) for r in self.runtimes]


@dataclass(frozen=True)
class TaskRecord:
    id: str
    target_id: str
    purpose: str
    trial_id: str | None
    calibration_id: str | None
    runtime: str
    input_shape: list[int]
    batch_size: int
    num_threads: int
    min_run_time: float
    rounds: int
    model_path: str
    payload: dict[str, Any]
    state: str
    attempts: int
    lease_id: str | None
    agent_id: str | None
    lease_expires_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED)


@dataclass(frozen=True)
class PredictorRecord:
    target_id: str
    runtime: str
    version: int
    predictor: str
    accuracy: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class CalibrationRecord:
    id: str
    target_id: str
    runtime: str
    quick: bool
    state: str
    progress: str | None
    error: str | None
    predictor_version: int | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class TargetRecord:
    id: str
    owner: str
    name: str
    created_at: datetime
    agents: list[AgentRecord]
    queued: int
    predictors: list[PredictorRecord]  # the newest version per runtime


def _agent(row: AgentRow, target: TargetRow, leased: int = 0) -> AgentRecord:
    return AgentRecord(
        row.id, row.target_id, target.name, target.owner, row.key_id, row.name, dict(row.hardware),
        list(row.runtimes), row.concurrency, row.registered_at, row.last_seen_at, row.measurements_done, leased,
    )  # fmt: skip


def _task(row: MeasurementTaskRow) -> TaskRecord:
    return TaskRecord(
        row.id, row.target_id, row.purpose, row.trial_id, row.calibration_id, row.runtime, list(row.input_shape),
        row.batch_size, row.num_threads, row.min_run_time, row.rounds, row.model_path, dict(row.payload or {}),
        row.state, row.attempts, row.lease_id, row.agent_id, row.lease_expires_at,
        None if row.result is None else dict(row.result), row.error, row.created_at,
    )  # fmt: skip


def _predictor(row: TargetPredictorRow) -> PredictorRecord:
    return PredictorRecord(row.target_id, row.runtime, row.version, row.predictor, dict(row.accuracy), row.created_at)


def _calibration(row: CalibrationRow) -> CalibrationRecord:
    return CalibrationRecord(
        row.id, row.target_id, row.runtime, row.quick, row.state, row.progress, row.error, row.predictor_version,
        row.created_at, row.finished_at,
    )  # fmt: skip


class Measurements:
    """The store's repository of targets, agents, measurement tasks, calibrations and per-target predictors."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- targets and agents -------------------------------------------------------------------

    @retrying(idempotent=True)
    def register_agent(
        self, principal: Principal, target: str, name: str, hardware: dict[str, Any],
        runtimes: Sequence[dict[str, Any]], concurrency: int,
    ) -> AgentRecord:  # fmt: skip
        """The agent ``name`` of the caller's target ``target`` (both created when new), described afresh.

        Registering again under the same name (an agent restarted with its home folder) is the same agent.
        """
        check_printable(target)
        check_printable(name)
        assert principal.key_id is not None
        with self._store._write() as s:
            target_row = self._target_row(s, principal.owner, target, create=True)
            row = s.scalars(
                self._store._lock(select(AgentRow).where(AgentRow.target_id == target_row.id, AgentRow.name == name), s)
            ).first()
            now = utcnow()
            if row is None:
                row = AgentRow(
                    id=uuid.uuid4().hex, target_id=target_row.id, key_id=principal.key_id, name=name,
                    hardware=hardware, runtimes=list(runtimes), concurrency=concurrency, registered_at=now,
                    last_seen_at=now, measurements_done=0,
                )  # fmt: skip
                s.add(row)
            else:
                row.key_id, row.hardware, row.runtimes = principal.key_id, hardware, list(runtimes)
                row.concurrency, row.last_seen_at = concurrency, now
            s.flush()
            return _agent(row, target_row)

    def _target_row(self, s: Any, owner: str, name: str, create: bool = False) -> TargetRow:
        row = s.scalars(select(TargetRow).where(TargetRow.owner == owner, TargetRow.name == name)).first()
        if row is None:
            if not create:
                raise NotFound(f"target {name!r} not found")
            row = TargetRow(id=uuid.uuid4().hex, owner=owner, name=name, created_at=utcnow())
            s.add(row)
            s.flush()
        return row

    @retrying(idempotent=True)
    def agent(self, principal: Principal, agent_id: str, seen: bool = True) -> AgentRecord:
        """The caller's agent ``agent_id`` (another owner's is not found); ``seen`` stamps its last call."""
        with self._store._write() as s:
            row = s.get(AgentRow, agent_id)
            target = None if row is None else s.get(TargetRow, row.target_id)
            if row is None or target is None or target.owner != principal.owner:
                raise NotFound(f"agent {agent_id} not found")
            if seen:
                row.last_seen_at = utcnow()
            return _agent(row, target)

    @retrying(idempotent=True)
    def target(self, owner: str, name: str) -> TargetRecord:
        with self._store._read() as s:
            return self._target(s, self._target_row(s, owner, name))

    @retrying(idempotent=True)
    def targets(self, owner: str | None) -> list[TargetRecord]:
        """Every target of ``owner`` (every owner's for ``None``), by name."""
        stmt = select(TargetRow).order_by(TargetRow.owner, TargetRow.name)
        if owner is not None:
            stmt = stmt.where(TargetRow.owner == owner)
        with self._store._read() as s:
            return [self._target(s, row) for row in s.scalars(stmt)]

    def target_names(self, owner: str) -> list[str]:
        with self._store._read() as s:
            return list(s.scalars(select(TargetRow.name).where(TargetRow.owner == owner).order_by(TargetRow.name)))

    def _target(self, s: Any, row: TargetRow) -> TargetRecord:
        now = utcnow()
        leased = dict(s.execute(
            select(MeasurementTaskRow.agent_id, func.count()).where(
                MeasurementTaskRow.target_id == row.id, MeasurementTaskRow.state == LEASED,
                MeasurementTaskRow.lease_expires_at > now,
            ).group_by(MeasurementTaskRow.agent_id)
        ).all())  # fmt: skip
        agents = [_agent(a, row, leased.get(a.id, 0)) for a in s.scalars(
            select(AgentRow).where(AgentRow.target_id == row.id).order_by(AgentRow.name))]
        queued = s.scalar(select(func.count()).select_from(MeasurementTaskRow).where(
            MeasurementTaskRow.target_id == row.id, MeasurementTaskRow.state == QUEUED)) or 0
        newest = (
            select(TargetPredictorRow.runtime, func.max(TargetPredictorRow.version).label("v"))
            .where(TargetPredictorRow.target_id == row.id).group_by(TargetPredictorRow.runtime).subquery()
        )
        predictors = [_predictor(p) for p in s.scalars(
            select(TargetPredictorRow).join(newest, (TargetPredictorRow.runtime == newest.c.runtime)
                                            & (TargetPredictorRow.version == newest.c.v))
            .where(TargetPredictorRow.target_id == row.id).order_by(TargetPredictorRow.runtime))]
        return TargetRecord(row.id, row.owner, row.name, row.created_at, agents, int(queued), predictors)

    # -- tasks --------------------------------------------------------------------------------

    @retrying(idempotent=False)
    def create_task(
        self, target_id: str, purpose: str, runtime: str, input_shape: Sequence[int], model_path: str, *,
        trial_id: str | None = None, calibration_id: str | None = None, payload: dict[str, Any] | None = None,
        batch_size: int = 1, num_threads: int = 1, min_run_time: float = 0.2, rounds: int = 3,
        task_id: str | None = None,
    ) -> TaskRecord:  # fmt: skip
        with self._store._write() as s:
            row = MeasurementTaskRow(
                id=task_id or uuid.uuid4().hex, target_id=target_id, purpose=purpose, trial_id=trial_id,
                calibration_id=calibration_id, runtime=runtime, input_shape=list(input_shape), batch_size=batch_size,
                num_threads=num_threads, min_run_time=min_run_time, rounds=rounds, model_path=model_path,
                payload=payload or {}, state=QUEUED, attempts=0, created_at=utcnow(),
            )  # fmt: skip
            s.add(row)
            s.flush()
            return _task(row)

    @retrying(idempotent=True)
    def task(self, task_id: str) -> TaskRecord:
        with self._store._read() as s:
            row = s.get(MeasurementTaskRow, task_id)
            if row is None:
                raise NotFound(f"measurement task {task_id} not found")
            return _task(row)

    @retrying(idempotent=True)
    def trial_task(self, trial_id: str) -> TaskRecord | None:
        """The newest measurement task of a trial, if it has one."""
        with self._store._read() as s:
            row = s.scalars(
                select(MeasurementTaskRow).where(MeasurementTaskRow.trial_id == trial_id)
                .order_by(MeasurementTaskRow.created_at.desc())
            ).first()
            return None if row is None else _task(row)

    @retrying(idempotent=True)
    def calibration_tasks(self, calibration_id: str) -> list[TaskRecord]:
        with self._store._read() as s:
            return [_task(row) for row in s.scalars(
                select(MeasurementTaskRow).where(MeasurementTaskRow.calibration_id == calibration_id)
                .order_by(MeasurementTaskRow.created_at, MeasurementTaskRow.id))]

    @retrying(idempotent=False)
    def lease(self, agent: AgentRecord, lease_s: float = LEASE_S) -> TaskRecord | None:
        """The oldest task of the agent's target in a runtime it offers, queued or with an expired lease,
        leased to it; ``None`` when there is none or the agent already holds its ``concurrency``."""
        now = utcnow()
        with self._store._write() as s:
            held = s.scalar(select(func.count()).select_from(MeasurementTaskRow).where(
                MeasurementTaskRow.agent_id == agent.id, MeasurementTaskRow.state == LEASED,
                MeasurementTaskRow.lease_expires_at > now)) or 0  # fmt: skip
            if held >= agent.concurrency:
                return None
            stmt = (
                select(MeasurementTaskRow)
                .where(
                    MeasurementTaskRow.target_id == agent.target_id,
                    MeasurementTaskRow.runtime.in_(agent.runtime_names()),
                    or_(MeasurementTaskRow.state == QUEUED,
                        (MeasurementTaskRow.state == LEASED) & (MeasurementTaskRow.lease_expires_at <= now)),
                )
                .order_by(MeasurementTaskRow.created_at, MeasurementTaskRow.id)
                .limit(1)
            )  # fmt: skip
            if s.bind.dialect.name != "sqlite":
                stmt = stmt.with_for_update(skip_locked=True)
            while True:
                row = s.scalars(stmt).first()
                if row is None:
                    return None
                if row.attempts >= MAX_ATTEMPTS:  # every agent that took it went silent
                    row.state, row.finished_at = FAILED, now
                    row.error = f"leased {row.attempts} times and no agent reported it (each went silent)"
                    s.flush()
                    continue
                row.state, row.lease_id, row.agent_id = LEASED, uuid.uuid4().hex, agent.id
                row.lease_expires_at = now + timedelta(seconds=lease_s)
                row.attempts += 1
                s.flush()
                return _task(row)

    @retrying(idempotent=True)
    def heartbeat(self, agent: AgentRecord, task_id: str, lease_id: str, lease_s: float = LEASE_S) -> None:
        """Extend the lease; :class:`LeaseLost` when it is not the task's lease any more."""
        with self._store._write() as s:
            row = self._agent_task(s, agent, task_id, lock=True)
            if row.state != LEASED or row.lease_id != lease_id:
                raise LeaseLost(f"task {task_id} is no longer leased under {lease_id}")
            row.lease_expires_at = utcnow() + timedelta(seconds=lease_s)

    @retrying(idempotent=True)
    def report(
        self, agent: AgentRecord, task_id: str, lease_id: str, result: dict[str, Any] | None, error: str | None
    ) -> TaskRecord:
        """Take the agent's result (or error) for a task it leased, once.

        A finished task answers as it is, whoever reports again (an agent that retried a report whose
        answer it lost). A report under a lease that another agent now holds raises :class:`LeaseLost`.
        """
        with self._store._write() as s:
            row = self._agent_task(s, agent, task_id, lock=True)
            if row.state in (DONE, FAILED):
                return _task(row)
            if row.lease_id != lease_id:
                raise LeaseLost(f"task {task_id} was leased again after lease {lease_id} expired")
            now = utcnow()
            row.finished_at, row.lease_expires_at = now, None
            if error is None:
                row.state, row.result = DONE, result
                agent_row = s.get(AgentRow, agent.id)
                if agent_row is not None:
                    agent_row.measurements_done += 1
                    agent_row.last_seen_at = now
            else:
                row.state, row.error = FAILED, error[:2000]
            s.flush()
            return _task(row)

    def _agent_task(self, s: Any, agent: AgentRecord, task_id: str, lock: bool = False) -> MeasurementTaskRow:
        stmt = select(MeasurementTaskRow).where(MeasurementTaskRow.id == task_id)
        row = s.scalars(self._store._lock(stmt, s) if lock else stmt).first()
        if row is None or row.target_id != agent.target_id:
            raise NotFound(f"measurement task {task_id} not found")
        return row

    @retrying(idempotent=True)
    def task_for_agent(self, agent: AgentRecord, task_id: str) -> TaskRecord:
        with self._store._read() as s:
            return _task(self._agent_task(s, agent, task_id))

    @retrying(idempotent=True)
    def fail_task(self, task_id: str, error: str) -> TaskRecord:
        """End an unfinished task (its trial timed out waiting, or its job ended); a finished one stays."""
        with self._store._write() as s:
            row = s.scalars(self._store._lock(select(MeasurementTaskRow).where(MeasurementTaskRow.id == task_id), s)).first()
            if row is None:
                raise NotFound(f"measurement task {task_id} not found")
            if row.state not in (DONE, FAILED):
                row.state, row.error, row.finished_at, row.lease_expires_at = FAILED, error[:2000], utcnow(), None
            return _task(row)

    # -- predictors and calibrations ----------------------------------------------------------

    @retrying(idempotent=False)
    def add_predictor(self, target_id: str, runtime: str, predictor: str, accuracy: dict[str, Any]) -> int:
        """Store a new version of the target's predictor for ``runtime``; returns its version."""
        with self._store._write() as s:
            s.scalars(self._store._lock(select(TargetRow).where(TargetRow.id == target_id), s)).first()  # versions in turn
            last = s.scalar(select(func.max(TargetPredictorRow.version)).where(
                TargetPredictorRow.target_id == target_id, TargetPredictorRow.runtime == runtime)) or 0
            s.add(TargetPredictorRow(target_id=target_id, runtime=runtime, version=last + 1, predictor=predictor,
                                     accuracy=accuracy, created_at=utcnow()))  # fmt: skip
            return int(last) + 1

    @retrying(idempotent=True)
    def predictor(self, target_id: str, runtime: str) -> PredictorRecord | None:
        """The newest predictor of the target for ``runtime``."""
        with self._store._read() as s:
            row = s.scalars(
                select(TargetPredictorRow).where(TargetPredictorRow.target_id == target_id,
                                                 TargetPredictorRow.runtime == runtime)
                .order_by(TargetPredictorRow.version.desc())
            ).first()  # fmt: skip
            return None if row is None else _predictor(row)

    @retrying(idempotent=False)
    def create_calibration(self, target_id: str, runtime: str, quick: bool) -> CalibrationRecord:
        with self._store._write() as s:
            row = CalibrationRow(id=uuid.uuid4().hex, target_id=target_id, runtime=runtime, quick=quick,
                                 state="measuring", created_at=utcnow())  # fmt: skip
            s.add(row)
            s.flush()
            return _calibration(row)

    @retrying(idempotent=True)
    def update_calibration(self, calibration_id: str, **changes: Any) -> CalibrationRecord:
        """Set ``progress``, or end it (``state`` done/failed, ``error``, ``predictor_version``)."""
        with self._store._write() as s:
            row = s.get(CalibrationRow, calibration_id)
            if row is None:
                raise NotFound(f"calibration {calibration_id} not found")
            for name, value in changes.items():
                setattr(row, name, value)
            if changes.get("state") in ("done", "failed"):
                row.finished_at = utcnow()
            return _calibration(row)

    @retrying(idempotent=True)
    def calibration(self, target_id: str, calibration_id: str) -> CalibrationRecord:
        with self._store._read() as s:
            row = s.get(CalibrationRow, calibration_id)
            if row is None or row.target_id != target_id:
                raise NotFound(f"calibration {calibration_id} not found")
            return _calibration(row)

    @retrying(idempotent=True)
    def abandon_calibrations(self, reason: str) -> int:
        """End every calibration still measuring (the server that ran them stopped); returns how many."""
        with self._store._write() as s:
            rows = list(s.scalars(select(CalibrationRow).where(CalibrationRow.state == "measuring")))
            for row in rows:
                row.state, row.error, row.finished_at = "failed", reason, utcnow()
                for task in s.scalars(select(MeasurementTaskRow).where(
                        MeasurementTaskRow.calibration_id == row.id, MeasurementTaskRow.state.in_((QUEUED, LEASED)))):
                    task.state, task.error, task.finished_at = FAILED, reason, utcnow()
            return len(rows)

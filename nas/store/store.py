"""The store: a narrow repository over the tables that enforces the job and trial state machines.

Everything that reads or writes jobs and trials goes through here. The runner is the only writer
of a job's trials; the API creates jobs and requests cancellation.
"""

from __future__ import annotations

import hashlib
import json
import math
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, Text, case, cast, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from nas.arch import fingerprint
from nas.cluster import Node
from nas.metrics import BASELINE
from nas.data.stored import UnknownDataset
from nas.models.stored import UnknownModel
from nas.errors import AmbiguousId, BudgetNotRaised, IllegalTransition, NotFound, QuotaExceeded, TooManyJobs
from nas.safe_text import check_printable
from nas.trial_log import tail
from nas.specs import (
    Annotation,
    DatasetOptions,
    DatasetRecord,
    EpochMetrics,
    Job,
    JobOutline,
    JobSpec,
    JobStatus,
    LayerInfo,
    ModelRecord,
    Trial,
    TrialState,
    merged_attrs,
)
from nas.store.measurements import Measurements
from nas.store.retry import CommitUncertain, is_transient, retrying
from nas.store.tables import (
    ApiKeyRow,
    ArtifactRow,
    DatasetRow,
    DispatcherRow,
    JobRow,
    LatencyObservationRow,
    ModelRow,
    TrialEpochRow,
    TrialLayerRow,
    TrialRow,
    utcnow,
)

# Allowed trial transitions; a finished trial never changes again.
R = TypeVar("R")  # a stored resource's record

TRIAL_TRANSITIONS: dict[TrialState, frozenset[TrialState]] = {
    TrialState.queued: frozenset({TrialState.running, TrialState.infeasible, TrialState.failed, TrialState.cancelled}),
    TrialState.running: frozenset(
        {TrialState.complete, TrialState.pruned, TrialState.failed, TrialState.queued, TrialState.cancelled}
    ),
}
CANCELLED_BEFORE_START = "its job was cancelled before it started"
"""The error of a trial that its job's cancel request ended while queued."""
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.cancelled, JobStatus.failed}),
    JobStatus.running: frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}),
}  # and a finished job whose budget is raised is queued again (Store.extend_budget), nothing else
# The budget fields a running or finished job may raise (PATCH /jobs/{id}).
EXTENSIBLE_BUDGET = ("max_trials", "timeout_s")

# A dispatcher records a heartbeat every DISPATCHER_HEARTBEAT_S seconds; readiness counts one
# silent for DISPATCHER_STALE_S as down.
DISPATCHER_HEARTBEAT_S = 2.0
DISPATCHER_STALE_S = 10.0
USER_KEY, AGENT_KEY = "user", "agent"  # the kinds of API key (api_keys.kind)


@dataclass(frozen=True)
class Principal:
    """Who is asking: an owner name, whether the key may see every owner's jobs, and which key it is."""

    owner: str
    is_admin: bool = False
    key_id: int | None = field(default=None, compare=False)
    kind: str = field(default=USER_KEY, compare=False)

    @property
    def is_agent(self) -> bool:
        """An agent key: it measures on its owner's targets and reads nothing else."""
        return self.kind == AGENT_KEY


@dataclass(frozen=True)
class ApiKey:
    """What may be shown of a key: never the key, nor its hash."""

    id: int
    owner: str
    is_admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    kind: str = USER_KEY

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class Artifact:
    trial_id: str
    kind: str
    format: str
    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class LatencyObservation:
    """One stored latency observation (see :class:`nas.store.tables.LatencyObservationRow`)."""

    id: int
    target_key: str
    predictor_id: str
    record: dict[str, Any]
    job_id: str | None
    trial_id: str | None
    created_at: datetime


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics without NaN or infinite values (a diverged loss): JSON has no such numbers,
    PostgreSQL refuses them, and a missing metric is honest where a NaN would poison sorting."""
    return {name: value for name, value in metrics.items() if not isinstance(value, float) or math.isfinite(value)}


def _new_id() -> str:
    return uuid.uuid4().hex


ID_LENGTH = 32
"""Every stored id is a uuid4 as 32 lowercase hex digits (:func:`_new_id`)."""
MIN_ID_PREFIX = 4
"""The shortest id prefix looked up: shorter ones match too much to mean anything."""
_HEX = re.compile(r"[0-9a-fA-F]+")


def resolve_id(s: Session, column: Any, given: str, noun: str, *visible: Any) -> str:
    """The full id that ``given`` names: itself, or the one id among those ``visible`` keeps that starts
    with it, as git and docker accept a unique prefix.

    ``visible`` holds the viewer's ownership conditions, so a prefix never matches (nor counts)
    another owner's ids. A prefix of fewer than :data:`MIN_ID_PREFIX` hex digits, or one nothing
    matches, is :class:`~nas.errors.NotFound`; one that matches several is :class:`~nas.errors.AmbiguousId`.
    """
    if len(given) >= ID_LENGTH or not _HEX.fullmatch(given):
        return given  # a whole id (or no id at all): the caller's exact lookup answers
    if len(given) < MIN_ID_PREFIX:
        raise NotFound(f"{noun} {given} not found: an id prefix needs at least {MIN_ID_PREFIX} characters")
    prefix = given.lower()
    found = list(s.scalars(select(column).where(column.startswith(prefix), *visible).limit(1000)))
    if not found:
        raise NotFound(f"{noun} {given} not found")
    if len(found) > 1:
        many = f"{len(found)}" if len(found) < 1000 else "1000 or more"
        raise AmbiguousId(f"id prefix {given} matches {many} {noun}s; give more of the id", given)
    return found[0]


def _stored_dataset(spec: dict[str, Any]) -> str | None:
    """The id of the stored dataset a (validated) job spec names, if it names one."""
    dataset = spec["dataset"]
    return dataset["params"].get("id") if dataset["name"] == "upload" else None


def _stored_model(spec: dict[str, Any]) -> str | None:
    """The id of the stored model a (validated) job spec's search space is made from, if any: a
    space names its stored model in the parameter ``model_id``."""
    model_id = spec["search_space"].get("params", {}).get("model_id")
    return model_id if isinstance(model_id, str) else None


class Store:
    """Repository of jobs, trials, metrics, layers, artifacts, datasets and API keys."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(sqlite_immediate=True)
        self.measurements = Measurements(self)  # targets, agents and their measurement tasks

    # -- sessions ---------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A transaction; a connection lost while committing raises :class:`CommitUncertain`."""
        with Session(self._writer, expire_on_commit=False) as session:
            session.begin()
            yield session  # an exception here leaves the transaction to close()'s rollback
            try:
                session.commit()
            except DBAPIError as exc:
                if is_transient(exc):
                    raise CommitUncertain() from exc
                raise

    @staticmethod
    def _lock(stmt: Select[Any], session: Session) -> Select[Any]:
        """Row locks where the backend has them; SQLite's BEGIN IMMEDIATE already serialises."""
        return stmt if session.bind.dialect.name == "sqlite" else stmt.with_for_update()

    # -- API keys ---------------------------------------------------------------------------

    @retrying(idempotent=False)
    def create_api_key(self, owner: str, is_admin: bool = False, kind: str = USER_KEY) -> str:
        """Mint a key; only its hash is stored, so this is the one time it is seen.

        An ``agent`` key (``kind``) is for measurement agents: it may only register agents for its
        owner's targets and report measurements, so a key left on a lab device reads nothing.
        """
        if not owner.strip():
            raise ValueError("an API key needs an owner name")
        if kind not in (USER_KEY, AGENT_KEY):
            raise ValueError(f"unknown key kind {kind!r}; valid: {USER_KEY}, {AGENT_KEY}")
        if kind == AGENT_KEY and is_admin:
            raise ValueError("an agent key cannot be an admin key")
        check_printable(owner)  # owners appear in logs, key lists and error messages
        key = "nas_" + secrets.token_urlsafe(32)
        with self._write() as s:
            s.add(ApiKeyRow(owner=owner, key_hash=hash_key(key), is_admin=is_admin, kind=kind))
        return key

    @retrying(idempotent=True)
    def authenticate(self, key: str) -> Principal | None:
        """The key's principal; ``None`` for an unknown or revoked key (read afresh: no cache outlives a revocation)."""
        digest = hash_key(key)
        with self._read() as s:
            row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest)).first()
        if row is None or row.revoked or not hmac.compare_digest(row.key_hash, digest):
            return None
        return Principal(owner=row.owner, is_admin=row.is_admin, key_id=row.id, kind=row.kind)

    @staticmethod
    def _api_key(row: ApiKeyRow) -> ApiKey:
        revoked_at = row.revoked_at or (row.created_at if row.revoked else None)  # revoked before the time was kept
        return ApiKey(row.id, row.owner, row.is_admin, row.created_at, row.last_used_at, revoked_at, row.kind)

    @retrying(idempotent=True)
    def api_key(self, key_id: int) -> ApiKey | None:
        with self._read() as s:
            row = s.get(ApiKeyRow, key_id)
        return None if row is None else self._api_key(row)

    @retrying(idempotent=True)
    def list_api_keys(self, owner: str | None = None) -> list[ApiKey]:
        """Every key (or ``owner``'s), oldest first."""
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.id)
        if owner is not None:
            stmt = stmt.where(ApiKeyRow.owner == owner)
        with self._read() as s:
            return [self._api_key(row) for row in s.scalars(stmt)]

    @retrying(idempotent=True)
    def revoke_api_keys(self, key_id: int | None = None, owner: str | None = None) -> list[ApiKey]:
        """Revoke the key ``key_id``, or every key of ``owner`` (both given: that key, if ``owner``'s).

        Returns the keys that matched, revoked now or before; ``NotFound`` when none did. Every
        request is authenticated against the database, so the keys stop working at once.
        """
        if key_id is None and owner is None:
            raise ValueError("name a key id or an owner")
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.id)
        if key_id is not None:
            stmt = stmt.where(ApiKeyRow.id == key_id)
        if owner is not None:
            stmt = stmt.where(ApiKeyRow.owner == owner)
        now = utcnow()
        with self._write() as s:
            rows = list(s.scalars(stmt))
            for row in rows:
                if not row.revoked:
                    row.revoked, row.revoked_at = True, now
            keys = [self._api_key(row) for row in rows]
        if not keys:
            raise NotFound(f"API key {key_id if key_id is not None else owner} not found")
        return keys

    @retrying(idempotent=True)
    def note_api_key_use(self, key_id: int) -> None:
        """Stamp the key's ``last_used_at`` (callers do so at most once a minute per key)."""
        with self._write() as s:
            s.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=utcnow()))

    # -- jobs -------------------------------------------------------------------------------

    @retrying(idempotent=False)
    def create_job(
        self,
        spec: JobSpec,
        owner: str,
        max_active: int | None = None,
        max_per_hour: int | None = None,
        max_spec_bytes: int | None = None,
    ) -> Job:
        """Queue a job; ``TooManyJobs`` if the owner already has ``max_active`` active jobs, created
        ``max_per_hour`` in the last hour, or would store more than ``max_spec_bytes`` of specs;
        ``UnknownDataset`` (``UnknownModel``) if the stored dataset (model) it names was deleted
        since the spec was checked."""
        row = JobRow(
            id=_new_id(),
            name=spec.name,
            owner=owner,
            status=JobStatus.queued.value,
            spec=spec.model_dump(mode="json"),
            cancel_requested=False,
            next_trial_number=0,
        )
        with self._write() as s:
            self._check_quota(s, owner, row.spec, max_active, max_per_hour, max_spec_bytes)
            dataset_id = _stored_dataset(row.spec)
            if dataset_id is not None:
                # A shared lock on its row: a deletion waits for this job, then finds it using the dataset.
                held = select(DatasetRow.id).where(DatasetRow.id == dataset_id)
                if s.bind.dialect.name != "sqlite":
                    held = held.with_for_update(read=True)
                if s.scalar(held) is None:
                    raise UnknownDataset(f"no dataset {dataset_id}: it was deleted")
            model_id = _stored_model(row.spec)
            if model_id is not None:  # as for the dataset, and always after it: one lock order
                held_model = select(ModelRow.id).where(ModelRow.id == model_id)
                if s.bind.dialect.name != "sqlite":
                    held_model = held_model.with_for_update(read=True)
                if s.scalar(held_model) is None:
                    raise UnknownModel(f"no model {model_id}: it was deleted")
            s.add(row)
            s.flush()
            return self._job(s, row)

    @retrying(idempotent=True)
    def get_job(self, job_id: str, viewer: Principal | None = None) -> Job:
        """The job, with the dense baseline its trials record (their first one has it, as every one)."""
        with self._read() as s:
            job = self._job(s, self._job_row(s, job_id, viewer))
            first = s.scalars(select(TrialRow.metrics).where(TrialRow.job_id == job.id).order_by(TrialRow.number).limit(1))
            metrics = first.first() or {}
            job.baseline = {name: metrics[name] for name in BASELINE if name in metrics}
            return job

    @retrying(idempotent=True)
    def list_jobs(
        self,
        viewer: Principal | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> tuple[list[Job], int | None]:
        """Newest first; the cursor is the last row's sequence number."""
        stmt = select(JobRow).order_by(JobRow.seq.desc()).limit(limit + 1)
        if viewer is not None and not viewer.is_admin:
            stmt = stmt.where(JobRow.owner == viewer.owner)
        if status is not None:
            stmt = stmt.where(JobRow.status == status.value)
        if cursor is not None:
            stmt = stmt.where(JobRow.seq < cursor)
        with self._read() as s:
            rows = list(s.scalars(stmt))
            more = len(rows) > limit
            rows = rows[:limit]
            counts = self._trial_counts(s, [r.id for r in rows])
            jobs = [self._job(s, r, counts.get(r.id, (0, 0, 0))) for r in rows]
        return jobs, (rows[-1].seq if more and rows else None)

    @retrying(idempotent=True)
    def changed_jobs(self, viewer: Principal | None, since: datetime, limit: int = 100) -> list[Job]:
        """Jobs whose visible state may have changed at or after ``since``, newest first: created,
        started or finished since, or unfinished with a trial changed since. Live lists poll this,
        so a finished job is never read again, and an unfinished one costs one index probe."""
        trial_changed = (
            select(TrialRow.id).where(TrialRow.job_id == JobRow.id, TrialRow.updated_at >= since).exists()
        )
        unfinished = JobRow.status.in_([JobStatus.queued.value, JobStatus.running.value])
        stmt = (
            select(JobRow)
            .where(
                (JobRow.created_at >= since) | (JobRow.started_at >= since) | (JobRow.finished_at >= since)
                | (unfinished & trial_changed)
            )
            .order_by(JobRow.seq.desc())
            .limit(limit)
        )  # fmt: skip
        if viewer is not None and not viewer.is_admin:
            stmt = stmt.where(JobRow.owner == viewer.owner)
        with self._read() as s:
            rows = list(s.scalars(stmt))
            counts = self._trial_counts(s, [r.id for r in rows])
            return [self._job(s, r, counts.get(r.id, (0, 0, 0))) for r in rows]

    @retrying(idempotent=False)
    def request_cancel(self, job_id: str, viewer: Principal | None = None) -> Job:
        """Cancel a queued job now; ask the runner of a running job to stop it. Its queued trials
        end ``cancelled`` at once, and none starts from now on (:meth:`start_trial`)."""
        with self._write() as s:
            row = self._job_row(s, job_id, viewer, lock=True)
            status = JobStatus(row.status)
            if status.finished:
                raise IllegalTransition(f"job {row.id} is already {status.value}")
            row.cancel_requested = True
            if status is JobStatus.queued:
                row.status = JobStatus.cancelled.value
                row.finished_at = utcnow()
                row.error = "cancelled before it started"
            now = utcnow()
            s.execute(
                update(TrialRow)
                .where(TrialRow.job_id == row.id, TrialRow.state == TrialState.queued.value)
                .values(state=TrialState.cancelled.value, error=CANCELLED_BEFORE_START, finished_at=now, updated_at=now)
            )
            s.flush()
            return self._job(s, row)

    @retrying(idempotent=True)
    def extend_budget(
        self, job_id: str, raised: Mapping[str, float], viewer: Principal | None = None, max_active: int | None = None
    ) -> Job:
        """Raise the job's ``budget`` fields in ``raised`` (of :data:`EXTENSIBLE_BUDGET`).

        A running job's runner reads the new budget within a heartbeat; a finished one goes back to
        ``queued`` (``TooManyJobs`` if its owner has ``max_active`` active jobs) and is resumed with
        its trials. Values equal to the job's change nothing, so a repeated change is harmless.
        ``BudgetNotRaised`` when a field would go down: checked here, under the row's lock, so two
        racing changes never lower a budget.
        """
        with self._write() as s:
            row = self._job_row(s, job_id, viewer, lock=True)
            budget = dict(row.spec["budget"])
            for name, value in raised.items():
                if name not in EXTENSIBLE_BUDGET:
                    raise BudgetNotRaised(name, f"only {' and '.join(EXTENSIBLE_BUDGET)} can be raised")
                if budget.get(name) is None and name == "timeout_s":
                    raise BudgetNotRaised(name, "the job has no time limit (timeout_s is null); nothing to raise")
                if value < budget[name]:
                    raise BudgetNotRaised(name, f"budget.{name} can only be raised: it is {budget[name]}, not {value}")
            if not any(value > budget[name] for name, value in raised.items()):
                return self._job(s, row)  # already so (a repeated change): nothing to do
            if JobStatus(row.status).finished:
                self._check_quota(s, row.owner, row.spec, max_active, None, None)
                self._requeue(row)
            row.spec = {**row.spec, "budget": {**budget, **raised}}  # a new dict: the JSON column sees the change
            s.flush()
            return self._job(s, row)

    @retrying(idempotent=True)
    def requeue_if_raised(self, job_id: str, budget: Mapping[str, Any]) -> bool:
        """Queue a job its runner just finished under ``budget`` again if its stored budget differs:
        the owner raised it after the runner's last look (:meth:`extend_budget` found it running)."""
        with self._write() as s:
            row = self._job_row(s, job_id, None, lock=True)
            if not JobStatus(row.status).finished or row.spec["budget"] == dict(budget):
                return False
            self._requeue(row)
            return True

    @staticmethod
    def _requeue(row: JobRow) -> None:
        """A finished job queued again, to be resumed with its trials."""
        row.status = JobStatus.queued.value
        row.cancel_requested = False
        row.finished_at = row.error = row.lease_owner = row.lease_expires_at = None

    @retrying(idempotent=True)
    def job_budget(self, job_id: str) -> dict[str, Any]:
        """The job's stored ``budget`` (its runner re-reads it: the owner may raise it while the job runs)."""
        with self._read() as s:
            spec = s.scalar(select(JobRow.spec).where(JobRow.id == job_id))
        if spec is None:
            raise NotFound(f"job {job_id} not found")
        return spec["budget"]

    @retrying(idempotent=True)
    def job_owner(self, job_id: str) -> str:
        """Whose job it is: its agent target is that owner's."""
        with self._read() as s:
            owner = s.scalar(select(JobRow.owner).where(JobRow.id == job_id))
        if owner is None:
            raise NotFound(f"job {job_id} not found")
        return owner

    @retrying(idempotent=False)
    def delete_job(self, job_id: str, viewer: Principal | None = None) -> Job:
        """Forget a finished job with its trials, their epochs, layers and artifact rows (the files
        under ``artifacts/<job id>`` are the caller's to remove); ``IllegalTransition`` while it is
        queued or running. Latency observations stay: they carry no weights or data, and keep
        refining the latency predictor for every job."""
        with self._write() as s:
            row = self._job_row(s, job_id, viewer, lock=True)
            status = JobStatus(row.status)
            if not status.finished:
                raise IllegalTransition(f"job {row.id} is {status.value}; cancel it first "
                                        f"(POST /jobs/{row.id}/cancel or nas cancel), then delete it")  # fmt: skip
            job = self._job(s, row)
            trial_ids = select(TrialRow.id).where(TrialRow.job_id == row.id).scalar_subquery()
            for table in (TrialEpochRow, TrialLayerRow, ArtifactRow):
                s.execute(delete(table).where(table.trial_id.in_(trial_ids)))
            s.execute(update(TrialRow).where(TrialRow.parent_id.in_(trial_ids)).values(parent_id=None))
            s.execute(delete(TrialRow).where(TrialRow.job_id == row.id))
            s.delete(row)
        return job

    @retrying(idempotent=True)
    def annotate_job(self, job_id: str, annotation: Annotation, viewer: Principal | None = None) -> Job:
        """Set the job's note and merge its user attributes (owner or admin); ``ValueError`` past the cap."""
        with self._write() as s:
            row = self._job_row(s, job_id, viewer, lock=True)
            row.note, row.user_attrs = self._annotated(row.note, row.user_attrs, annotation)
            s.flush()
            return self._job(s, row)

    @retrying(idempotent=True)
    def annotate_trial(self, trial_id: str, annotation: Annotation, viewer: Principal | None = None) -> Trial:
        """Set the trial's note and merge its user attributes (its job's owner or admin); ``ValueError`` past the cap."""
        with self._write() as s:
            row = self._visible_trial_row(s, trial_id, viewer, lock=True)
            row.note, row.user_attrs = self._annotated(row.note, row.user_attrs, annotation)
            s.flush()
            return self._trial(row, has_model=row.id in self._has_model(s, [row.id]), has_log=row.id in self._has_log(s, [row.id]))

    @staticmethod
    def _annotated(note: str | None, attrs: dict[str, Any] | None, annotation: Annotation) -> tuple[str | None, dict[str, Any]]:
        """The note and attributes after ``annotation``: fields it leaves out stay as they are."""
        given = annotation.model_fields_set
        if "note" in given:
            note = annotation.note or None
        if "user_attrs" in given:
            attrs = merged_attrs(attrs or {}, annotation.user_attrs or {})
        return note, dict(attrs or {})

    @retrying(idempotent=False)
    def claim_job(self, runner_id: str, lease_s: float) -> str | None:
        """Take the oldest queued job, or a running one whose runner's lease ran out."""
        now = utcnow()
        claimable = (JobRow.status == JobStatus.queued.value) | (
            (JobRow.status == JobStatus.running.value) & (JobRow.lease_expires_at < now)
        )
        stmt = select(JobRow).where(claimable).order_by(JobRow.seq).limit(1)
        with self._write() as s:
            if s.bind.dialect.name != "sqlite":
                stmt = stmt.with_for_update(skip_locked=True)
            row = s.scalars(stmt).first()
            if row is None:
                return None
            if row.status == JobStatus.queued.value:
                row.status = JobStatus.running.value
                row.started_at = now
            row.lease_owner = runner_id
            row.lease_expires_at = now + timedelta(seconds=lease_s)
            return row.id

    @retrying(idempotent=True)
    def renew_lease(self, job_id: str, runner_id: str, lease_s: float) -> bool:
        """Extend the lease; ``False`` when another runner took the job over."""
        with self._write() as s:
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.lease_owner == runner_id)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
            )
            return result.rowcount == 1

    @retrying(idempotent=True)
    def release_lease(self, job_id: str, runner_id: str) -> None:
        """Give a job back at shutdown so another runner can take it at once."""
        with self._write() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.lease_owner == runner_id)
                .values(lease_owner=None, lease_expires_at=utcnow())
            )

    @retrying(idempotent=True)
    def dispatcher_heartbeat(self, runner_id: str, ray_up: bool, nodes: Sequence[Node] | None = None) -> None:
        """Record that a dispatcher is alive, whether its Ray answers and, when it did, the cluster's
        live ``nodes`` (``None`` keeps those it reported last). Its first heartbeat also forgets
        dispatchers silent for a day: crashed ones, which could not remove their rows."""
        reported = None if nodes is None else [node.as_json() for node in nodes]
        with self._write() as s:
            row = s.get(DispatcherRow, runner_id)
            if row is None:
                s.execute(delete(DispatcherRow).where(DispatcherRow.heartbeat_at < utcnow() - timedelta(days=1)))
                s.add(DispatcherRow(id=runner_id, ray_up=ray_up, nodes=reported))
            else:
                row.ray_up = ray_up
                row.heartbeat_at = utcnow()
                if reported is not None and reported != row.nodes:
                    row.nodes = reported

    @retrying(idempotent=True)
    def remove_dispatcher(self, runner_id: str) -> None:
        """Forget a dispatcher that stopped."""
        with self._write() as s:
            s.execute(delete(DispatcherRow).where(DispatcherRow.id == runner_id))

    def live_dispatchers(self, max_age_s: float = DISPATCHER_STALE_S) -> dict[str, bool]:
        """Runner id → whether its Ray was up, for each dispatcher heard from within ``max_age_s``.

        Not retried: readiness should answer at once, also when the database is away.
        """
        since = utcnow() - timedelta(seconds=max_age_s)
        with self._read() as s:
            rows = s.execute(select(DispatcherRow.id, DispatcherRow.ray_up).where(DispatcherRow.heartbeat_at >= since))
            return {runner_id: ray_up for runner_id, ray_up in rows}

    def cluster_nodes(self, max_age_s: float = DISPATCHER_STALE_S) -> list[Node] | None:
        """The nodes of the Ray clusters that the dispatchers heard from within ``max_age_s`` reported
        (a node several dispatchers share counted once); ``None`` when none of them has reported any."""
        since = utcnow() - timedelta(seconds=max_age_s)
        with self._read() as s:
            reports = s.scalars(select(DispatcherRow.nodes).where(DispatcherRow.heartbeat_at >= since)).all()
        nodes = {node["id"]: Node.from_json(node) for report in reports if report for node in report}
        return list(nodes.values()) or None

    @retrying(idempotent=True)
    def cancel_requested(self, job_id: str) -> bool:
        with self._read() as s:
            return bool(s.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    @retrying(idempotent=True)
    def finish_job(self, job_id: str, status: JobStatus, error: str | None = None) -> Job:
        with self._write() as s:
            row = self._job_row(s, job_id, None, lock=True)
            current = JobStatus(row.status)
            if current.finished and current is status and row.error == error:
                return self._job(s, row)  # the same outcome again (a retried write): nothing to do
            if status not in JOB_TRANSITIONS.get(current, frozenset()):
                raise IllegalTransition(f"job {job_id}: {current.value} -> {status.value} is not allowed")
            row.status = status.value
            row.error = error
            row.finished_at = utcnow()
            row.lease_owner = None
            row.lease_expires_at = None
            s.flush()
            return self._job(s, row)

    @retrying(idempotent=True)
    def set_best_trial(self, job_id: str, trial_id: str | None) -> None:
        with self._write() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(best_trial_id=trial_id))

    # -- trials -----------------------------------------------------------------------------

    def create_trial(
        self,
        job_id: str,
        arch: dict[str, Any],
        parent_id: str | None = None,
        state: TrialState = TrialState.queued,
        error: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Trial:
        """Add a trial with the job's next number; numbers never repeat within a job.

        A trial created ``running`` is started by the same write (its first attempt): a runner that
        hands the trial to its workers at once spares a transaction per trial."""
        return self._create_trial(_new_id(), job_id, arch, parent_id, state, error, metrics)

    @retrying(idempotent=True)
    def _create_trial(
        self,
        trial_id: str,
        job_id: str,
        arch: dict[str, Any],
        parent_id: str | None,
        state: TrialState,
        error: str | None,
        metrics: dict[str, float] | None,
    ) -> Trial:
        with self._write() as s:
            existing = s.get(TrialRow, trial_id)
            if existing is not None:  # an earlier try committed before its connection broke
                return self._trial(existing)
            job = self._job_row(s, job_id, None, lock=True)
            if job.cancel_requested:
                raise IllegalTransition(f"job {job_id} was cancelled: it takes no new trials")
            number = job.next_trial_number
            job.next_trial_number = number + 1
            now = utcnow()
            row = TrialRow(
                id=trial_id,
                job_id=job_id,
                number=number,
                state=state.value,
                arch=arch,
                fingerprint=fingerprint(arch),
                parent_id=parent_id,
                metrics=_finite(metrics or {}),
                error=error,
                attempts=1 if state is TrialState.running else 0,
                created_at=now,
                updated_at=now,
                started_at=now if state is TrialState.running else None,
                heartbeat_at=now if state is TrialState.running else None,
                finished_at=now if state.finished else None,
            )
            s.add(row)
            s.flush()
            return self._trial(row)

    @retrying(idempotent=True)
    def start_trial(self, trial_id: str, node_id: str | None = None, attempt: int | None = None) -> Trial:
        """Mark a trial running; given the ``attempt`` it starts, a repeat of this call is a no-op.

        Once its job's cancellation was requested a trial never starts: a queued one ends
        ``cancelled`` instead, and the trial returned says so. The job's row is locked first (as
        :meth:`request_cancel` locks it), so a cancel request and a start are ordered.
        """
        with self._write() as s:
            job_id = s.scalar(select(TrialRow.job_id).where(TrialRow.id == trial_id))
            if job_id is None:
                raise NotFound(f"trial {trial_id} not found")
            job = self._job_row(s, job_id, None, lock=True)
            row = self._trial_row(s, trial_id)
            if attempt is not None and row.state == TrialState.running.value and row.attempts == attempt:
                return self._trial(row)
            if job.cancel_requested and row.state in (TrialState.queued.value, TrialState.cancelled.value):
                if row.state == TrialState.queued.value:
                    row = self._transition(s, trial_id, TrialState.cancelled)
                    row.error, row.finished_at = CANCELLED_BEFORE_START, row.updated_at
                return self._trial(row)
            row = self._transition(s, trial_id, TrialState.running)
            row.attempts += 1
            row.node_id = node_id
            row.started_at = row.heartbeat_at = utcnow()
            s.execute(delete(TrialEpochRow).where(TrialEpochRow.trial_id == trial_id))
            return self._trial(row)

    @retrying(idempotent=True)
    def report_epoch(self, trial_id: str, epoch: int, metrics: dict[str, float], log: str | None = None) -> None:
        """Record an epoch of a running trial; ``log`` (its log so far) replaces the stored one, so a
        running trial's log can be read, and survives its runner."""
        metrics = _finite(metrics)
        with self._write() as s:
            row = self._trial_row(s, trial_id)
            if row.state != TrialState.running.value:
                raise IllegalTransition(f"trial {trial_id} is {row.state}; only a running trial reports")
            row.heartbeat_at = utcnow()
            if log:
                row.log = tail(log)
            done = s.scalar(
                select(TrialEpochRow.metrics).where(TrialEpochRow.trial_id == trial_id, TrialEpochRow.epoch == epoch)
            )
            if done is None:
                s.add(TrialEpochRow(trial_id=trial_id, epoch=epoch, metrics=metrics))
            elif done != metrics:
                raise IllegalTransition(f"trial {trial_id} already reported a different epoch {epoch}")

    @retrying(idempotent=True)
    def touch_trials(self, trial_ids: Sequence[str]) -> None:
        """Heartbeat: the runner holding these trials is alive (``heartbeat_at`` of the running ones)."""
        if not trial_ids:
            return
        with self._write() as s:
            s.execute(
                update(TrialRow)
                .where(TrialRow.id.in_(list(trial_ids)), TrialRow.state == TrialState.running.value)
                .values(heartbeat_at=utcnow(), updated_at=TrialRow.updated_at)  # not a visible change
            )

    @retrying(idempotent=True)
    def finish_trial(
        self,
        trial_id: str,
        state: TrialState,
        metrics: dict[str, float] | None = None,
        layers: Sequence[LayerInfo] = (),
        error: str | None = None,
        node_id: str | None = None,
        outputs: dict[str, Any] | None = None,
        log: str | None = None,
        epoch: tuple[int, dict[str, float]] | None = None,
    ) -> Trial:
        """End a trial in ``state``; ``log`` (its worker's log and traceback) is kept to its last
        :data:`~nas.trial_log.LOG_TAIL_BYTES`. ``epoch`` (number, metrics) is a last epoch the worker
        sent with the outcome rather than on its own, recorded in the same transaction."""
        if not state.finished:
            raise ValueError(f"{state.value} is not a final trial state")
        metrics = None if metrics is None else _finite(metrics)
        with self._write() as s:
            row = self._trial_row(s, trial_id)
            if row.state == state.value and row.error == error and metrics in (None, row.metrics):
                return self._trial(row)  # the same outcome again (a retried write): nothing to do
            if epoch is not None:
                s.add(TrialEpochRow(trial_id=trial_id, epoch=epoch[0], metrics=_finite(epoch[1])))
            row = self._transition(s, trial_id, state)
            row.finished_at = utcnow()
            row.error = error
            row.node_id = node_id or row.node_id
            if metrics is not None:
                row.metrics = metrics
            if outputs is not None:
                row.outputs = outputs
            if log is not None:
                row.log = tail(log)
            for position, layer in enumerate(layers):
                s.add(TrialLayerRow(trial_id=trial_id, position=position, **layer.model_dump()))
            return self._trial(row)

    @retrying(idempotent=True)
    def add_trial_metrics(self, trial_id: str, metrics: dict[str, float]) -> Trial:
        """Add measurements taken after a trial finished (e.g. ``onnx_latency_ms`` at its first export)."""
        with self._write() as s:
            row = self._trial_row(s, trial_id)
            if not TrialState(row.state).finished:
                raise IllegalTransition(f"trial {trial_id} is {row.state}; metrics are added to a finished trial")
            row.metrics = {**(row.metrics or {}), **_finite(metrics)}
            row.updated_at = utcnow()
            return self._trial(row)

    @retrying(idempotent=True)
    def requeue_trial(self, trial_id: str, error: str | None = None, count_attempt: bool = True) -> Trial:
        """Send a running trial back to the queue (its worker died or its runner stopped).

        ``count_attempt=False`` (a graceful server stop) does not spend one of its retries.
        """
        with self._write() as s:
            row = self._trial_row(s, trial_id)
            if row.state == TrialState.queued.value and row.error == error and row.started_at is not None:
                return self._trial(row)  # already re-queued for this reason (a retried write)
            row = self._transition(s, trial_id, TrialState.queued)
            row.error = error
            if not count_attempt:
                row.attempts -= 1
            row.node_id = None
            return self._trial(row)

    @retrying(idempotent=True)
    def get_trial(self, trial_id: str, viewer: Principal | None = None) -> Trial:
        """A trial with its per-epoch history and per-layer report."""
        with self._read() as s:
            row = self._visible_trial_row(s, trial_id, viewer)
            trial_id = row.id
            history = s.scalars(
                select(TrialEpochRow).where(TrialEpochRow.trial_id == trial_id).order_by(TrialEpochRow.epoch)
            )
            layers = s.scalars(
                select(TrialLayerRow).where(TrialLayerRow.trial_id == trial_id).order_by(TrialLayerRow.position)
            )
            trial = self._trial(
                row, has_model=trial_id in self._has_model(s, [trial_id]), has_log=trial_id in self._has_log(s, [trial_id])
            )
            trial.history = [EpochMetrics(epoch=h.epoch, metrics=h.metrics) for h in history]
            trial.layers = [
                LayerInfo(name=l.name, shape=l.shape, density=l.density, pattern=l.pattern, kernel=l.kernel)
                for l in layers
            ]
            return trial

    @retrying(idempotent=True)
    def trial_log(self, trial_id: str, viewer: Principal | None = None) -> str | None:
        """The trial's stored log (``None`` when it has none); ``NotFound`` as :meth:`get_trial` says it."""
        with self._read() as s:
            return self._visible_trial_row(s, trial_id, viewer).log

    @retrying(idempotent=True)
    def list_trials(
        self,
        job_id: str,
        viewer: Principal | None = None,
        state: TrialState | None = None,
        limit: int | None = None,
        cursor: int | None = None,
    ) -> tuple[list[Trial], int | None]:
        """Trials in number order; the cursor is the last trial's number."""
        with self._read() as s:
            stmt = select(TrialRow).where(TrialRow.job_id == self._job_row(s, job_id, viewer).id).order_by(TrialRow.number)
            if state is not None:
                stmt = stmt.where(TrialRow.state == state.value)
            if cursor is not None:
                stmt = stmt.where(TrialRow.number > cursor)
            if limit is not None:
                stmt = stmt.limit(limit + 1)
            rows = list(s.scalars(stmt))
            more = limit is not None and len(rows) > limit
            rows = rows[:limit] if limit is not None else rows
            with_model = self._has_model(s, [r.id for r in rows])
            with_log = self._has_log(s, [r.id for r in rows])
        return [self._trial(r, r.id in with_model, r.id in with_log) for r in rows], (rows[-1].number if more else None)

    # -- artifacts --------------------------------------------------------------------------

    @retrying(idempotent=True)
    def add_artifact(self, artifact: Artifact) -> None:
        with self._write() as s:
            s.execute(
                delete(ArtifactRow).where(
                    ArtifactRow.trial_id == artifact.trial_id,
                    ArtifactRow.kind == artifact.kind,
                    ArtifactRow.format == artifact.format,
                )
            )
            s.add(ArtifactRow(**artifact.__dict__))

    @retrying(idempotent=True)
    def get_artifact(self, trial_id: str, kind: str, fmt: str, viewer: Principal | None = None) -> Artifact:
        with self._read() as s:
            trial_id = self._visible_trial_row(s, trial_id, viewer).id
            row = s.scalars(
                select(ArtifactRow).where(
                    ArtifactRow.trial_id == trial_id, ArtifactRow.kind == kind, ArtifactRow.format == fmt
                )
            ).first()
            if row is None:
                raise NotFound(f"trial {trial_id} has no {kind} in {fmt} format")
            return Artifact(row.trial_id, row.kind, row.format, row.path, row.size_bytes, row.sha256)

    # -- datasets ---------------------------------------------------------------------------

    @retrying(idempotent=True)
    def create_dataset(
        self, record: DatasetRecord, options_key: str, max_owner_bytes: int | None = None
    ) -> tuple[DatasetRecord, bool]:
        """Keep ``record``: ``(record, True)``, or ``(existing, False)`` when its owner already stored
        the same file read with the same options (``options_key``). ``QuotaExceeded`` when the
        owner's stored bytes would pass ``max_owner_bytes``; serialised per owner, so two racing
        uploads cannot both pass the quota or both be kept."""
        with self._write() as s:
            self._lock_owner(s, record.owner)
            existing = s.scalars(
                select(DatasetRow).where(
                    DatasetRow.owner == record.owner, DatasetRow.sha256 == record.sha256,
                    DatasetRow.options_key == options_key,
                )  # fmt: skip
            ).first()
            if existing is not None:
                return self._dataset(existing), False
            if max_owner_bytes is not None:
                stored = self._owner_dataset_bytes(s, record.owner)
                if stored + record.stored_bytes > max_owner_bytes:
                    raise QuotaExceeded(
                        f"{record.owner}'s datasets and models take {stored} bytes; this dataset ({record.stored_bytes} bytes) "
                        f"would pass the limit of {max_owner_bytes} (NAS_LIMIT_OWNER_DATASET_BYTES)"
                    )
            fields = record.model_dump(mode="json", exclude={"created_at"})
            s.add(DatasetRow(**fields, options_key=options_key, created_at=record.created_at))
        return record, True

    @retrying(idempotent=True)
    def find_dataset(self, owner: str, sha256: str, options_key: str) -> DatasetRecord | None:
        """The owner's dataset of that content read with those options, if stored."""
        stmt = select(DatasetRow).where(
            DatasetRow.owner == owner, DatasetRow.sha256 == sha256, DatasetRow.options_key == options_key
        )
        with self._read() as s:
            row = s.scalars(stmt).first()
        return None if row is None else self._dataset(row)

    @retrying(idempotent=True)
    def get_dataset(self, dataset_id: str, viewer: Principal | None = None) -> DatasetRecord:
        """``NotFound`` for an unknown id and for another owner's dataset alike."""
        with self._read() as s:
            return self._dataset(self._dataset_row(s, dataset_id, viewer))

    @retrying(idempotent=True)
    def list_datasets(
        self, viewer: Principal | None = None, limit: int = 50, cursor: int | None = None
    ) -> tuple[list[DatasetRecord], int | None]:
        """Newest first; the cursor is the last row's sequence number."""
        return self._owned_page(DatasetRow, self._dataset, viewer, limit, cursor)

    @retrying(idempotent=False)
    def delete_dataset(self, dataset_id: str, viewer: Principal | None = None) -> DatasetRecord:
        """Forget a dataset (its files are the caller's to remove); ``IllegalTransition`` while a
        queued or running job names it. Its row's lock serialises this with submissions of such jobs
        (:meth:`create_job`)."""
        with self._write() as s:
            row = self._dataset_row(s, dataset_id, viewer, lock=True)
            self._refuse_while_used(s, "dataset", row.id, _stored_dataset)
            record = self._dataset(row)
            s.delete(row)
        return record

    @retrying(idempotent=True)
    def owner_dataset_bytes(self, owner: str) -> int:
        """What the owner's datasets and models take on the server (the datasets' ``stored_bytes``,
        the models' ``size_bytes``): one quota, ``NAS_LIMIT_OWNER_DATASET_BYTES``."""
        with self._read() as s:
            return self._owner_dataset_bytes(s, owner)

    def _owned_page(
        self, row_type: Any, to_record: Callable[[Any], R], viewer: Principal | None, limit: int, cursor: int | None
    ) -> tuple[list[R], int | None]:
        """A page of stored resources, newest first, the viewer's own unless an admin; the next
        cursor is the last row's sequence number."""
        stmt = select(row_type).order_by(row_type.seq.desc()).limit(limit + 1)
        if viewer is not None and not viewer.is_admin:
            stmt = stmt.where(row_type.owner == viewer.owner)
        if cursor is not None:
            stmt = stmt.where(row_type.seq < cursor)
        with self._read() as s:
            rows = list(s.scalars(stmt))
        more = len(rows) > limit
        rows = rows[:limit]
        return [to_record(r) for r in rows], (rows[-1].seq if more and rows else None)

    def _refuse_while_used(
        self, s: Session, kind: str, resource_id: str, uses: Callable[[dict[str, Any]], str | None]
    ) -> None:
        """``IllegalTransition`` while a queued or running job names the stored resource."""
        using = self._jobs_using(s, resource_id, uses)
        if using:
            raise IllegalTransition(
                f"{kind} {resource_id} is used by {len(using)} queued or running job(s) ({', '.join(using)}); "
                "delete it once they finish or are cancelled"
            )

    # -- models -----------------------------------------------------------------------------

    @retrying(idempotent=True)
    def create_model(self, record: ModelRecord, max_owner_bytes: int | None = None) -> tuple[ModelRecord, bool]:
        """Keep ``record``: ``(record, True)``, or ``(existing, False)`` when its owner already stored
        the same file. ``QuotaExceeded`` when the owner's stored bytes (datasets and models, one
        quota) would pass ``max_owner_bytes``; serialised per owner like :meth:`create_dataset`."""
        with self._write() as s:
            self._lock_owner(s, record.owner)
            existing = s.scalars(
                select(ModelRow).where(ModelRow.owner == record.owner, ModelRow.sha256 == record.sha256)
            ).first()
            if existing is not None:
                return self._model(existing), False
            if max_owner_bytes is not None:
                stored = self._owner_dataset_bytes(s, record.owner)
                if stored + record.size_bytes > max_owner_bytes:
                    raise QuotaExceeded(
                        f"{record.owner}'s datasets and models take {stored} bytes; this model ({record.size_bytes} "
                        f"bytes) would pass the limit of {max_owner_bytes} (NAS_LIMIT_OWNER_DATASET_BYTES)"
                    )
            fields = record.model_dump(mode="json", exclude={"created_at"})
            s.add(ModelRow(**fields, created_at=record.created_at))
        return record, True

    @retrying(idempotent=True)
    def find_model(self, owner: str, sha256: str) -> ModelRecord | None:
        """The owner's model of that content, if stored."""
        with self._read() as s:
            row = s.scalars(select(ModelRow).where(ModelRow.owner == owner, ModelRow.sha256 == sha256)).first()
        return None if row is None else self._model(row)

    @retrying(idempotent=True)
    def get_model(self, model_id: str, viewer: Principal | None = None) -> ModelRecord:
        """``NotFound`` for an unknown id and for another owner's model alike."""
        with self._read() as s:
            return self._model(self._model_row(s, model_id, viewer))

    @retrying(idempotent=True)
    def list_models(
        self, viewer: Principal | None = None, limit: int = 50, cursor: int | None = None
    ) -> tuple[list[ModelRecord], int | None]:
        """Newest first; the cursor is the last row's sequence number."""
        return self._owned_page(ModelRow, self._model, viewer, limit, cursor)

    @retrying(idempotent=False)
    def delete_model(self, model_id: str, viewer: Principal | None = None) -> ModelRecord:
        """Forget a model (its file is the caller's to remove); ``IllegalTransition`` while a queued
        or running job's search space is made from it. Its row's lock serialises this with
        submissions of such jobs (:meth:`create_job`)."""
        with self._write() as s:
            row = self._model_row(s, model_id, viewer, lock=True)
            self._refuse_while_used(s, "model", row.id, _stored_model)
            record = self._model(row)
            s.delete(row)
        return record

    # -- latency observations --------------------------------------------------------------

    @retrying(idempotent=True)
    def add_latency_observation(
        self, record: Mapping[str, Any], job_id: str | None = None, trial_id: str | None = None
    ) -> None:
        """Keep an observation made by ``nas.latency.observe`` (it names its ``target_key`` and
        ``predictor_id``). A trial has at most one: recording it again is a no-op."""
        with self._write() as s:
            if trial_id is not None and s.scalar(
                select(LatencyObservationRow.id).where(LatencyObservationRow.trial_id == trial_id)
            ) is not None:  # fmt: skip
                return
            s.add(
                LatencyObservationRow(
                    target_key=record["target_key"], predictor_id=record["predictor_id"], record=dict(record),
                    job_id=job_id, trial_id=trial_id,
                )  # fmt: skip
            )

    @retrying(idempotent=True)
    def latency_observations(
        self,
        target_key: str | None = None,
        predictor_id: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> list[LatencyObservation]:
        """The latest ``limit`` observations (all without it) that match the filters, oldest first."""
        stmt = select(LatencyObservationRow).order_by(LatencyObservationRow.id.desc())
        if target_key is not None:
            stmt = stmt.where(LatencyObservationRow.target_key == target_key)
        if predictor_id is not None:
            stmt = stmt.where(LatencyObservationRow.predictor_id == predictor_id)
        if job_id is not None:
            stmt = stmt.where(LatencyObservationRow.job_id == job_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as s:
            rows = list(s.scalars(stmt))
        return [
            LatencyObservation(r.id, r.target_key, r.predictor_id, r.record, r.job_id, r.trial_id, r.created_at)
            for r in reversed(rows)
        ]

    @retrying(idempotent=True)
    def latency_observation_revision(self, target_key: str, predictor_id: str) -> tuple[int, int]:
        """``(count, highest id)`` of the observations of one target and predictor: one indexed
        query, and it changes whenever one is added, so predictors refit only then."""
        stmt = select(func.count(), func.max(LatencyObservationRow.id)).where(
            LatencyObservationRow.target_key == target_key, LatencyObservationRow.predictor_id == predictor_id
        )
        with self._read() as s:
            count, highest = s.execute(stmt).one()
        return int(count), int(highest or 0)

    # -- metrics --------------------------------------------------------------------------

    @retrying(idempotent=True)
    def count_jobs_by_status(self) -> dict[JobStatus, int]:
        """Jobs per status over every owner, in one aggregate query (for ``/metrics``)."""
        with self._read() as s:
            rows = s.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
            return {JobStatus(status): int(n) for status, n in rows}

    @retrying(idempotent=True)
    def count_trials_by_state(self) -> dict[TrialState, int]:
        """Trials per state over every job, in one aggregate query (for ``/metrics``)."""
        with self._read() as s:
            rows = s.execute(select(TrialRow.state, func.count()).group_by(TrialRow.state))
            return {TrialState(state): int(n) for state, n in rows}

    @retrying(idempotent=True)
    def trial_durations(self) -> list[tuple[TrialState, float]]:
        """``(state, seconds from last start to end)`` of every finished trial that started (for ``/metrics``)."""
        stmt = select(TrialRow.state, TrialRow.started_at, TrialRow.finished_at).where(
            TrialRow.started_at.is_not(None), TrialRow.finished_at.is_not(None)
        )
        with self._read() as s:
            return [
                (TrialState(state), max((end - start).total_seconds(), 0.0)) for state, start, end in s.execute(stmt)
            ]

    @retrying(idempotent=True)
    def latency_predictions(self, limit: int = 1000) -> list[tuple[str, float, float]]:
        """``(target, predicted ms, measured ms)`` of the latest complete trials that have both."""
        stmt = (
            select(JobRow.spec, TrialRow.metrics)
            .join(JobRow, JobRow.id == TrialRow.job_id)
            .where(TrialRow.state == TrialState.complete.value)
            .order_by(TrialRow.finished_at.desc())
            .limit(limit)
        )
        with self._read() as s:
            rows = s.execute(stmt).all()
        return [
            (spec.get("target", "cpu"), float(m["predicted_latency_ms"]), float(m["latency_ms"]))
            for spec, m in rows
            if m.get("predicted_latency_ms") is not None and m.get("latency_ms")
        ]

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _check_quota(
        s: Session,
        owner: str,
        spec: dict[str, Any],
        max_active: int | None,
        max_per_hour: int | None,
        max_spec_bytes: int | None,
    ) -> None:
        """Check the owner's quotas, serialised per owner so that two racing submissions cannot
        both pass (SQLite's BEGIN IMMEDIATE already serialises writers)."""
        if max_active is None and max_per_hour is None and max_spec_bytes is None:
            return
        Store._lock_owner(s, owner)
        mine = JobRow.owner == owner
        if max_active is not None:
            active = s.scalar(
                select(func.count()).select_from(JobRow).where(
                    mine, JobRow.status.in_([JobStatus.queued.value, JobStatus.running.value])
                )
            )
            if active >= max_active:
                raise TooManyJobs(f"{owner} already has {active} queued or running jobs "
                                  f"(limit {max_active}, NAS_LIMIT_ACTIVE_JOBS)", retry_after=30)  # fmt: skip
        if max_per_hour is not None:
            now = utcnow()
            count, oldest = s.execute(
                select(func.count(), func.min(JobRow.created_at)).where(mine, JobRow.created_at > now - timedelta(hours=1))
            ).one()
            if count >= max_per_hour:
                wait = math.ceil((oldest + timedelta(hours=1) - now).total_seconds())
                raise TooManyJobs(f"{owner} created {count} jobs in the last hour "
                                  f"(limit {max_per_hour}, NAS_LIMIT_JOBS_PER_HOUR)", retry_after=max(1, wait))  # fmt: skip
        if max_spec_bytes is not None:
            stored = s.scalar(select(func.coalesce(func.sum(func.length(cast(JobRow.spec, Text))), 0)).where(mine))
            size = len(json.dumps(spec, separators=(",", ":")))
            if stored + size > max_spec_bytes:
                raise TooManyJobs(f"{owner}'s jobs store {stored} bytes of specs; this one ({size} bytes) would pass "
                                  f"the limit of {max_spec_bytes} (NAS_LIMIT_OWNER_SPEC_BYTES)", retry_after=3600)  # fmt: skip

    @staticmethod
    def _lock_owner(s: Session, owner: str) -> None:
        """Serialise this transaction with the owner's other quota-checked writes (PostgreSQL;
        SQLite's BEGIN IMMEDIATE already serialises writers)."""
        if s.bind.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:owner))"), {"owner": owner})

    @staticmethod
    def _owner_dataset_bytes(s: Session, owner: str) -> int:
        datasets = s.scalar(select(func.coalesce(func.sum(DatasetRow.stored_bytes), 0)).where(DatasetRow.owner == owner))
        models = s.scalar(select(func.coalesce(func.sum(ModelRow.size_bytes), 0)).where(ModelRow.owner == owner))
        return int(datasets) + int(models)

    @staticmethod
    def _jobs_using(s: Session, stored_id: str, named: Callable[[dict[str, Any]], str | None]) -> list[str]:
        """Ids of the queued or running jobs whose spec names ``stored_id`` where ``named`` reads it."""
        active = [JobStatus.queued.value, JobStatus.running.value]
        # The id (32 hex digits) in the spec's text narrows the rows; the spec itself decides.
        stmt = select(JobRow.id, JobRow.spec).where(
            JobRow.status.in_(active), cast(JobRow.spec, Text).contains(stored_id)
        ).order_by(JobRow.seq)
        return [job_id for job_id, spec in s.execute(stmt) if named(spec) == stored_id]

    def _model_row(self, s: Session, model_id: str, viewer: Principal | None, lock: bool = False) -> ModelRow:
        model_id = resolve_id(s, ModelRow.id, model_id, "model", *self._owned(ModelRow.owner, viewer))
        stmt = select(ModelRow).where(ModelRow.id == model_id)
        if lock:
            stmt = self._lock(stmt, s)
        row = s.scalars(stmt).first()
        if row is None or (viewer is not None and not viewer.is_admin and row.owner != viewer.owner):
            raise NotFound(f"model {model_id} not found")
        return row

    @staticmethod
    def _model(row: ModelRow) -> ModelRecord:
        return ModelRecord(
            id=row.id, name=row.name, owner=row.owner, input_shape=row.input_shape, num_outputs=row.num_outputs,
            params=row.params, layers=row.layers, opset=row.opset, producer=row.producer,
            size_bytes=row.size_bytes, sha256=row.sha256, dense_latency_ms=row.dense_latency_ms,
            created_at=row.created_at,
        )  # fmt: skip

    def _dataset_row(self, s: Session, dataset_id: str, viewer: Principal | None, lock: bool = False) -> DatasetRow:
        dataset_id = resolve_id(s, DatasetRow.id, dataset_id, "dataset", *self._owned(DatasetRow.owner, viewer))
        stmt = select(DatasetRow).where(DatasetRow.id == dataset_id)
        if lock:
            stmt = self._lock(stmt, s)
        row = s.scalars(stmt).first()
        if row is None or (viewer is not None and not viewer.is_admin and row.owner != viewer.owner):
            raise NotFound(f"dataset {dataset_id} not found")
        return row

    @staticmethod
    def _dataset(row: DatasetRow) -> DatasetRecord:
        return DatasetRecord(
            id=row.id, name=row.name, owner=row.owner, format=row.format, source=row.source, path=row.path,
            input_shape=row.input_shape, num_classes=row.num_classes, class_names=row.class_names,
            class_counts=row.class_counts, n_train=row.n_train, n_test=row.n_test, size_bytes=row.size_bytes,
            stored_bytes=row.stored_bytes, sha256=row.sha256, options=DatasetOptions.model_validate(row.options),
            test_given=row.test_given, summary=row.summary, created_at=row.created_at,
        )  # fmt: skip

    def _job_row(self, s: Session, job_id: str, viewer: Principal | None, lock: bool = False) -> JobRow:
        job_id = resolve_id(s, JobRow.id, job_id, "job", *self._owned(JobRow.owner, viewer))
        stmt = select(JobRow).where(JobRow.id == job_id)
        if lock:
            stmt = self._lock(stmt, s)
        row = s.scalars(stmt).first()
        if row is None or (viewer is not None and not viewer.is_admin and row.owner != viewer.owner):
            raise NotFound(f"job {job_id} not found")
        return row

    @staticmethod
    def _owned(owner: Any, viewer: Principal | None) -> tuple[Any, ...]:
        """The condition that keeps rows whose ``owner`` column is the viewer (none for an admin or the runner)."""
        return () if viewer is None or viewer.is_admin else (owner == viewer.owner,)

    def _trial_id(self, s: Session, trial_id: str, viewer: Principal | None) -> str:
        """The full id of the trial ``trial_id`` names (a unique prefix among the viewer's trials, or itself)."""
        mine = self._owned(JobRow.owner, viewer)
        visible = (select(JobRow.id).where(JobRow.id == TrialRow.job_id, *mine).exists(),) if mine else ()
        return resolve_id(s, TrialRow.id, trial_id, "trial", *visible)

    def _visible_trial_row(self, s: Session, trial_id: str, viewer: Principal | None, lock: bool = False) -> TrialRow:
        """The row of the trial ``trial_id`` names (a unique prefix too), with the same ``NotFound`` as
        for an unknown trial when the viewer may not see its job: the answer must not reveal that the
        trial exists, nor its job's id."""
        trial_id = self._trial_id(s, trial_id, viewer)
        row = self._trial_row(s, trial_id) if lock else s.get(TrialRow, trial_id)
        if row is None:
            raise NotFound(f"trial {trial_id} not found")
        try:
            self._job_row(s, row.job_id, viewer)
        except NotFound:
            raise NotFound(f"trial {trial_id} not found") from None
        return row

    def _trial_row(self, s: Session, trial_id: str) -> TrialRow:
        row = s.scalars(self._lock(select(TrialRow).where(TrialRow.id == trial_id), s)).first()
        if row is None:
            raise NotFound(f"trial {trial_id} not found")
        return row

    def _transition(self, s: Session, trial_id: str, new: TrialState) -> TrialRow:
        row = self._trial_row(s, trial_id)
        current = TrialState(row.state)
        if new not in TRIAL_TRANSITIONS.get(current, frozenset()):
            raise IllegalTransition(f"trial {trial_id}: {current.value} -> {new.value} is not allowed")
        row.state = new.value
        row.updated_at = utcnow()  # now, not at flush: the Trial a write returns carries it
        return row

    @staticmethod
    def _trial_counts(s: Session, job_ids: list[str]) -> dict[str, tuple[int, int, int]]:
        """Per job: trials, complete trials, finished trials."""
        if not job_ids:
            return {}
        complete = func.sum(case((TrialRow.state == TrialState.complete.value, 1), else_=0))
        unfinished = (TrialState.queued.value, TrialState.running.value)
        finished = func.sum(case((TrialRow.state.in_(unfinished), 0), else_=1))
        rows = s.execute(
            select(TrialRow.job_id, func.count(), complete, finished)
            .where(TrialRow.job_id.in_(job_ids))
            .group_by(TrialRow.job_id)
        )
        return {job_id: (int(n), int(c or 0), int(f or 0)) for job_id, n, c, f in rows}

    @staticmethod
    def _has_model(s: Session, trial_ids: list[str]) -> set[str]:
        if not trial_ids:
            return set()
        return set(
            s.scalars(
                select(ArtifactRow.trial_id).where(ArtifactRow.trial_id.in_(trial_ids), ArtifactRow.kind == "model")
            )
        )

    @staticmethod
    def _has_log(s: Session, trial_ids: list[str]) -> set[str]:
        """Which of the trials have a stored log, without reading the logs."""
        if not trial_ids:
            return set()
        return set(s.scalars(select(TrialRow.id).where(TrialRow.id.in_(trial_ids), TrialRow.log.is_not(None))))

    def _job(self, s: Session, row: JobRow, counts: tuple[int, int, int] | None = None) -> Job:
        if counts is None:
            counts = self._trial_counts(s, [row.id]).get(row.id, (0, 0, 0))
        return Job(
            id=row.id,
            name=row.name,
            owner=row.owner,
            status=JobStatus(row.status),
            outline=JobOutline.of(row.spec),
            spec=row.spec,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            n_trials=counts[0],
            n_complete=counts[1],
            n_finished=counts[2],
            best_trial_id=row.best_trial_id,
            error=row.error,
            note=row.note,
            user_attrs=row.user_attrs or {},
        )

    @staticmethod
    def _trial(row: TrialRow, has_model: bool = False, has_log: bool = False) -> Trial:
        return Trial(
            id=row.id,
            job_id=row.job_id,
            number=row.number,
            state=TrialState(row.state),
            arch=row.arch,
            parent_id=row.parent_id,
            metrics=row.metrics or {},
            node_id=row.node_id,
            attempts=row.attempts,
            heartbeat_at=row.heartbeat_at,
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            updated_at=row.updated_at,
            outputs=row.outputs or {},
            has_model=has_model,
            has_log=has_log,
            note=row.note,
            user_attrs=row.user_attrs or {},
        )

"""SQLAlchemy 2 tables. Times are timezone-aware UTC on every backend."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; hands back aware datetimes even from SQLite, which keeps no zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        # PostgreSQL answers in the session's time zone (PGTZ, the server's TimeZone setting)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None]
    # When the key last authenticated a request, to the minute (each API process writes it at most once a minute).
    last_used_at: Mapped[datetime | None]
    # "user" (the API's routes) or "agent" (measurement agents' routes only: it measures, it reads nothing)
    kind: Mapped[str] = mapped_column(String(16), default="user", server_default="user")


class JobRow(Base):
    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Dispatcher lease: the runner holding it renews it; an expired lease lets another take over.
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    next_trial_number: Mapped[int] = mapped_column(Integer, default=0)
    best_trial_id: Mapped[str | None] = mapped_column(String(32))
    # The owner's free text and key-value attributes, as researchers annotate runs.
    note: Mapped[str | None] = mapped_column(Text)
    user_attrs: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")


class DispatcherRow(Base):
    """A running dispatcher's last heartbeat, whether its Ray answered then, and that cluster's nodes.

    API processes never talk to Ray; their readiness answer and their check of a job's resources
    read these rows instead.
    """

    __tablename__ = "dispatchers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # the runner id of its job leases
    ray_up: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Its Ray cluster's live nodes when Ray last answered ([nas.cluster.Node as JSON]); None before then.
    nodes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)


class TrialRow(Base):
    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("job_id", "number", name="uq_trials_job_number"),
        Index("ix_trials_job_state", "job_id", "state"),
        Index("ix_trials_job_updated", "job_id", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    arch: Mapped[dict[str, Any]]
    fingerprint: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("trials.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    node_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Last sign of life of a running trial: an epoch report, or its runner's heartbeat.
    heartbeat_at: Mapped[datetime | None]
    # Strategy-specific results (a derived DASS cell, a lottery chain's rewind point), as JSON.
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Last change of anything a viewer sees (state, metrics, epochs); heartbeats leave it alone.
    # Live views poll on it.
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The trial's captured log and, when it failed, its traceback: the tail, size-capped. Deferred:
    # a page of trials loads none of them (GET /trials/{id}/log reads one).
    log: Mapped[str | None] = mapped_column(Text, deferred=True)
    note: Mapped[str | None] = mapped_column(Text)
    user_attrs: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")


class TrialEpochRow(Base):
    __tablename__ = "trial_epochs"
    __table_args__ = (UniqueConstraint("trial_id", "epoch", name="uq_trial_epochs_trial_epoch"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    trial_id: Mapped[str] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrialLayerRow(Base):
    __tablename__ = "trial_layers"
    __table_args__ = (UniqueConstraint("trial_id", "position", name="uq_trial_layers_trial_position"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    trial_id: Mapped[str] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    shape: Mapped[list[Any]]
    density: Mapped[float] = mapped_column(Float)
    pattern: Mapped[str] = mapped_column(String(32))
    kernel: Mapped[str | None] = mapped_column(String(32))


class ArtifactRow(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("trial_id", "kind", "format", name="uq_artifacts_trial_kind_format"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    trial_id: Mapped[str] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32))
    # Relative to the artifact folder and built from ids only, never from user strings.
    path: Mapped[str] = mapped_column(String(400))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LatencyObservationRow(Base):
    """A measured latency of a finished trial's model, with what the latency predictor said of it.

    Workers send it with the trial's result; every process that predicts refits the predictor's
    correction from these rows (``nas.latency.use_observations``), so nothing is kept on a worker.
    """

    __tablename__ = "latency_observations"
    __table_args__ = (
        Index("ix_latency_observations_target_predictor", "target_key", "predictor_id", "id"),
        UniqueConstraint("trial_id", name="uq_latency_observations_trial"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    target_key: Mapped[str] = mapped_column(String(200))  # nas.latency's TargetIdentity.key()
    predictor_id: Mapped[str] = mapped_column(String(64))
    # The observation as nas.latency.observe makes it: features, sum_ms, predicted_ms, measured_ms, time.
    record: Mapped[dict[str, Any]]
    # Where it came from; an observation outlives its job, so these are not foreign keys.
    job_id: Mapped[str | None] = mapped_column(String(32))
    trial_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetRow(Base):
    """A stored dataset (:class:`nas.specs.DatasetRecord`); its files lie under ``artifacts/datasets/<id>``.

    One owner's same file read with the same options is one dataset: ``options_key`` is the
    digest of the options its format reads.
    """

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("owner", "sha256", "options_key", name="uq_datasets_owner_content"),)

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    options_key: Mapped[str] = mapped_column(String(64))
    options: Mapped[dict[str, Any]]
    input_shape: Mapped[list[Any]]
    num_classes: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[Any]]
    class_counts: Mapped[dict[str, Any]]
    n_train: Mapped[int] = mapped_column(BigInteger)
    n_test: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    test_given: Mapped[bool] = mapped_column(Boolean)
    summary: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRow(Base):
    """A stored model (:class:`nas.specs.ModelRecord`); its ONNX file lies at ``artifacts/models/<id>/model.onnx``.

    One owner's same file is one model (``sha256``), whatever name it was uploaded under.
    """

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("owner", "sha256", name="uq_models_owner_content"),)

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    input_shape: Mapped[list[Any]]
    num_outputs: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[int] = mapped_column(BigInteger)
    layers: Mapped[list[Any]]
    opset: Mapped[int] = mapped_column(Integer)
    producer: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    dense_latency_ms: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TargetRow(Base):
    """A device an owner's measurement agents time models on; named by its owner, unique per owner."""

    __tablename__ = "targets"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_targets_owner_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentRow(Base):
    """One measurement agent of a target: what it runs on and offers, and when it last called."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("target_id", "name", name="uq_agents_target_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    hardware: Mapped[dict[str, Any]]
    runtimes: Mapped[list[Any]]
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    measurements_done: Mapped[int] = mapped_column(Integer, default=0)


class MeasurementTaskRow(Base):
    """A model to time on a target, held like a trial: queued → leased → done | failed, a lease that
    expires when its agent goes silent (the task is then leased again), and an idempotent result."""

    __tablename__ = "measurement_tasks"
    __table_args__ = (Index("ix_measurement_tasks_target_state", "target_id", "state"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(16))  # "trial" | "calibration"
    trial_id: Mapped[str | None] = mapped_column(String(36), index=True)
    calibration_id: Mapped[str | None] = mapped_column(String(32), index=True)
    runtime: Mapped[str] = mapped_column(String(32))
    input_shape: Mapped[list[Any]]
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    num_threads: Mapped[int] = mapped_column(Integer, default=1)
    min_run_time: Mapped[float] = mapped_column(Float)
    rounds: Mapped[int] = mapped_column(Integer)
    model_path: Mapped[str] = mapped_column(Text)  # relative to the artifact folder
    # What the trial ends with once its latency arrives (metrics, layers, outputs), so a runner
    # that took the job over can end it without training it again.
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_id: Mapped[str | None] = mapped_column(String(32))
    agent_id: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class CalibrationRow(Base):
    """A calibration of a target's predictor through its agents, and what it ended with."""

    __tablename__ = "calibrations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"), index=True)
    runtime: Mapped[str] = mapped_column(String(32))
    quick: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default="measuring")  # measuring | done | failed
    progress: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    predictor_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class TargetPredictorRow(Base):
    """A latency predictor fitted for a target and runtime; every calibration or refit adds a version."""

    __tablename__ = "target_predictors"
    __table_args__ = (UniqueConstraint("target_id", "runtime", "version", name="uq_target_predictors_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"), index=True)
    runtime: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    predictor: Mapped[str] = mapped_column(Text)  # the predictor's own JSON document
    accuracy: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

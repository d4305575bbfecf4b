"""Read-only queries behind the web dashboard.

The dashboard asks questions the :class:`~nas.store.Store` does not: a page of a job's trials
sorted by any metric or architecture key and filtered by state, metric ranges and architecture
values (paged on the server, so a job with 10,000 trials costs the browser 50 rows), every trial as
CSV, a few metrics of every trial at once for the charts,
the per-layer densities of many trials, learning curves of chosen trials, and what changed since a
moment (for server-sent events). Every query checks that the viewer may see the job, as the Store
does: a job owned by someone else is :class:`~nas.errors.NotFound`.

Metrics live in a JSON column, and sorting 10,000 rows by a JSON field costs SQLite and
PostgreSQL a parse of every row on every request. So sorting and filtering run on a per-job
snapshot of the trials as arrays (:class:`JobColumns`), kept by :class:`ColumnCache` and brought
up to date on each request from the rows changed since (one range scan of the
``trials(job_id, updated_at)`` index); only the page's rows are then read from the table.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nas.arch import flatten, key_order
from nas.errors import NotFound
from nas.metrics import METRICS, format_value
from nas.specs import TrialState
from nas.store.store import Principal, Store, resolve_id
from nas.store.tables import ArtifactRow, JobRow, TrialEpochRow, TrialLayerRow, TrialRow

# A metric name as the dashboard may name it.
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# ``NAME OP VALUE``: NAME a metric or an architecture key (nested keys dotted, see nas.arch.flatten).
FILTER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]{0,127})\s*(>=|<=|!=|=|>|<)\s*(\S+)\s*")
TIME_COLUMNS = ("created_at", "started_at", "finished_at", "updated_at")
# Sortable besides ``metrics.<name>`` and ``arch.<key>``.
SORT_COLUMNS = ("number", "state", *TIME_COLUMNS)
ARCH = "arch."  # names an architecture key where a metric has the same name (``arch.sparsity``)
# Metric columns the charts read for every trial.
CHART_METRICS = (
    "accuracy", "loss", "sparsity", "latency_ms", "predicted_latency_ms", "nonzero_params", "params", "flops",
)
FINISHED_STATES = tuple(s.value for s in TrialState if s.finished)
# A row is re-read this long after its last change: a transaction may commit a little after the
# time it stamped.
OVERLAP = timedelta(seconds=3)
# A JSON object as the routes send it; its shape is documented by the models below.
Row = dict[str, Any]


class TrialSummary(BaseModel):
    """One row of the trials table: its architecture flattened, no layers or history."""

    id: str
    job_id: str
    number: int
    state: TrialState
    parent_id: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict, description="non-finite values read as null")
    arch: dict[str, Any] = Field(default_factory=dict, description="the architecture, one scalar per key (nested keys dotted)")
    error: str | None = None
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    has_model: bool = False
    parent_number: int | None = Field(None, description="the parent's number (trials table only)")


class TrialTable(BaseModel):
    """A page of a job's trials; ``total`` counts every trial the filters keep."""

    items: list[TrialSummary]
    arch_keys: list[str] = Field(description="every architecture key of the job's trials, in the order they sample them")
    total: int
    offset: int
    limit: int
    sort: str
    order: Literal["asc", "desc"]


class TrialPoints(BaseModel):
    """Columns of every trial of a job, for charts: position ``i`` of each list is one trial."""

    id: list[str]
    number: list[int]
    state: list[str]
    parent_id: list[str | None]
    finished_at: list[float | None] = Field(description="seconds since the Unix epoch")
    metrics: dict[str, list[float | None]]
    arch: list[dict[str, Any]] = Field(description="each trial's architecture, one scalar per key (nested keys dotted)")


class DensityMatrix(BaseModel):
    """Density of each prunable layer (rows) in each trial (columns); ``None`` where a trial lacks the layer."""

    layers: list[str]
    trials: list[TrialSummary]
    density: list[list[float | None]]


class EpochPoint(BaseModel):
    epoch: int
    metrics: dict[str, Any]


class TrialHistory(BaseModel):
    trial_id: str
    number: int
    history: list[EpochPoint]


class EpochChange(BaseModel):
    id: int = Field(description="the epoch row's id, increasing")
    trial_id: str
    epoch: int
    metrics: dict[str, Any]


_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less, "=": np.equal,
    "!=": lambda column, value: np.not_equal(column, value) & ~np.isnan(column),
}


@dataclass(frozen=True)
class TrialFilter:
    """``name op value``: a metric (``sparsity>=0.9``) or an architecture key (``depth=2``,
    ``width_0>=128``, ``activation=relu``); a trial without the value never passes.

    A bare name is a metric if there is one by that name, else an architecture key; ``arch.NAME``
    always names the key. A word (not a number) compares with ``=`` and ``!=`` only.
    """

    name: str
    op: str
    value: float | str

    @classmethod
    def parse(cls, text: str) -> TrialFilter:
        match = FILTER.fullmatch(text)
        if match is None:
            raise ValueError(f"filter {text!r} is not of the form NAME OP VALUE, e.g. sparsity>=0.9 or depth=2")
        name, op, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            if op in ("=", "!="):
                return cls(name, op, raw)
            raise ValueError(f"filter {text!r}: {raw!r} is not a number ({op} compares numbers; = and != also take a word)") from None
        if not math.isfinite(value):
            raise ValueError(f"filter {text!r}: the value must be a finite number")
        return cls(name, op, value)

    def __str__(self) -> str:
        value = self.value if isinstance(self.value, str) else f"{self.value:g}"
        return f"{self.name}{self.op}{value}"


class BadQuery(ValueError):
    """A filter or sort the job's trials cannot answer (an unknown name, a word compared with ``<``);
    ``field`` names the query parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _category(value: Any) -> str:
    """An architecture value as a categorical column holds it: strings as they are, others as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def check_metric_name(name: str) -> str:
    if not METRIC_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a metric name (letters, digits and _, starting with a letter)")
    return name


def _finite(value: Any) -> float | None:
    """A metric as JSON can carry it: non-finite and non-numeric values read as missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _epoch_seconds(value: datetime | None) -> float:
    return value.timestamp() if value is not None else math.nan


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _utc_iso(seconds: float) -> str:
    return "" if math.isnan(seconds) else datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def _csv_value(value: Any) -> Any:
    """An architecture value as a CSV field: missing empty, booleans and numbers as JSON writes them."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _csv_metric(name: str, value: float) -> str:
    """Integer metrics whole; others with every digit (``repr``), so nothing is lost on the way to pandas."""
    return format_value(name, value) if METRICS.get(name) is not None and METRICS[name].kind == "integer" else repr(value)


def _nullable(column: np.ndarray) -> list[float | None]:
    return [None if v != v else v for v in column.tolist()]


# -- the per-job snapshot --------------------------------------------------------------------


_ROW_COLUMNS = (
    TrialRow.id, TrialRow.number, TrialRow.state, TrialRow.parent_id, TrialRow.metrics, TrialRow.arch,
    TrialRow.created_at, TrialRow.started_at, TrialRow.finished_at, TrialRow.updated_at,
)


_HAS_MODEL = (
    select(ArtifactRow.id).where(ArtifactRow.trial_id == TrialRow.id, ArtifactRow.kind == "model").exists().label("has_model")
)
_SUMMARY_COLUMNS = (
    TrialRow.id, TrialRow.job_id, TrialRow.number, TrialRow.state, TrialRow.parent_id, TrialRow.metrics, TrialRow.arch,
    TrialRow.error, TrialRow.attempts, TrialRow.created_at, TrialRow.started_at, TrialRow.finished_at, TrialRow.updated_at, _HAS_MODEL,
)


@dataclass(frozen=True)
class JobColumns:
    """A job's trials as arrays (position ``i`` is one trial, in number order); never changed once made."""

    ids: list[str]
    position: dict[str, int]
    number: np.ndarray
    state: np.ndarray
    parent_id: list[str | None]
    times: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]
    arch: list[dict[str, Any]]
    latest: datetime | None
    derived: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def build(cls, rows: Sequence[Any]) -> JobColumns:
        rows = sorted(rows, key=lambda r: r.number)
        names = sorted({name for r in rows for name in (r.metrics or {})})
        metrics = {name: np.full(len(rows), np.nan) for name in names}
        for i, r in enumerate(rows):
            for name, value in (r.metrics or {}).items():
                v = _finite(value)
                if v is not None:
                    metrics[name][i] = v
        return cls(
            ids=[r.id for r in rows],
            position={r.id: i for i, r in enumerate(rows)},
            number=np.array([r.number for r in rows], dtype=np.int64),
            state=np.array([r.state for r in rows], dtype="<U16"),
            parent_id=[r.parent_id for r in rows],
            times={name: np.array([_epoch_seconds(getattr(r, name)) for r in rows], dtype=float) for name in TIME_COLUMNS},
            metrics=metrics,
            arch=[flatten(r.arch or {}) for r in rows],
            latest=max((r.updated_at for r in rows if r.updated_at is not None), default=None),
        )

    def patched(self, rows: Sequence[Any]) -> JobColumns:
        """A new snapshot with ``rows`` (changed or new trials) applied."""
        rows = [r for r in rows if r.id not in self.position or self._differs(r)]
        if not rows:
            return self
        new = sorted((r for r in rows if r.id not in self.position), key=lambda r: r.number)
        if new and self.number.size and new[0].number < self.number[-1]:
            return self.build([*self._as_rows(), *rows])  # numbers arrived out of order: rebuild
        n = len(self.ids) + len(new)
        ids = self.ids + [r.id for r in new]
        position = {**self.position, **{r.id: len(self.ids) + k for k, r in enumerate(new)}}
        grow = lambda a, fill: np.concatenate([a, np.full(len(new), fill, dtype=a.dtype)])  # noqa: E731
        number = grow(self.number, 0)
        state = grow(self.state, "")
        parent_id = self.parent_id + [None] * len(new)
        times = {k: grow(v, np.nan) for k, v in self.times.items()}
        metrics = {k: grow(v, np.nan) for k, v in self.metrics.items()}
        arch = self.arch + [{} for _ in new]
        latest = self.latest
        for r in rows:
            i = position[r.id]
            number[i], state[i], parent_id[i] = r.number, r.state, r.parent_id
            arch[i] = flatten(r.arch or {})
            for name in TIME_COLUMNS:
                times[name][i] = _epoch_seconds(getattr(r, name))
            for column in metrics.values():
                column[i] = np.nan
            for name, value in (r.metrics or {}).items():
                if name not in metrics:
                    metrics[name] = np.full(n, np.nan)
                v = _finite(value)
                metrics[name][i] = np.nan if v is None else v
            if r.updated_at is not None and (latest is None or r.updated_at > latest):
                latest = r.updated_at
        return JobColumns(ids, position, number, state, parent_id, times, metrics, arch, latest)

    def _differs(self, row: Any) -> bool:
        i = self.position[row.id]
        return _epoch_seconds(row.updated_at) != self.times["updated_at"][i] or row.state != self.state[i]

    def _as_rows(self) -> list[Any]:
        """The snapshot back as row-like objects (for a rebuild)."""
        from types import SimpleNamespace

        out = []
        for i, trial_id in enumerate(self.ids):
            metrics = {k: float(v[i]) for k, v in self.metrics.items() if not np.isnan(v[i])}
            stamp = lambda name: None if np.isnan(self.times[name][i]) else datetime.fromtimestamp(self.times[name][i]).astimezone()  # noqa: E731
            out.append(SimpleNamespace(
                id=trial_id, number=int(self.number[i]), state=str(self.state[i]), parent_id=self.parent_id[i], metrics=metrics,
                arch=self.arch[i], **{name: stamp(name) for name in TIME_COLUMNS},
            ))
        return out

    def metric(self, name: str) -> np.ndarray:
        column = self.metrics.get(name)
        return column if column is not None else np.full(len(self.ids), np.nan)

    @property
    def arch_keys(self) -> list[str]:
        """Every architecture key, in the order trials sample them (:func:`nas.arch.key_order`)."""
        if "arch_keys" not in self.derived:
            self.derived["arch_keys"] = key_order(self.arch)
        return self.derived["arch_keys"]

    def arch_column(self, key: str) -> np.ndarray:
        """An architecture key of every trial: floats (NaN where missing) if every value is a number,
        else strings (``None`` where missing), see :func:`_category`."""
        cached = self.derived.get(("arch", key))
        if cached is None:
            values = [a.get(key) for a in self.arch]
            numeric = all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if numeric:
                cached = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
            else:
                cached = np.array([None if v is None else _category(v) for v in values], dtype=object)
            self.derived[("arch", key)] = cached
        return cached

    def names(self) -> list[str]:
        """What a filter or sort may name: the metrics (the registry's and any the trials report),
        then the architecture keys."""
        return [*dict.fromkeys([*METRICS, *sorted(self.metrics)]), *self.arch_keys]

    def column(self, name: str, where: str) -> np.ndarray:
        """The metric or architecture column ``name`` names (see :class:`TrialFilter`); a ``ValueError``
        listing the valid names, the nearest first, if it names neither."""
        if name.startswith(ARCH) and name.removeprefix(ARCH) in self.arch_keys:
            return self.arch_column(name.removeprefix(ARCH))
        if name in METRICS or name in self.metrics:
            return self.metric(name)
        if name in self.arch_keys:
            return self.arch_column(name)
        valid = self.names()
        near = difflib.get_close_matches(name.removeprefix(ARCH), valid, n=3)
        hint = f"; did you mean {' or '.join(near)}?" if near else "."
        keys = ", ".join(self.arch_keys) or "(no trial has one yet)"
        raise ValueError(
            f"{where}: no metric or architecture key {name!r}{hint} Metrics: {', '.join(dict.fromkeys([*METRICS, *sorted(self.metrics)]))}. "
            f"Architecture keys of this job: {keys}."
        )

    def matches(self, f: TrialFilter) -> np.ndarray:
        """Which trials pass the filter."""
        column = self.column(f.name, f"filter {str(f)!r}")
        if column.dtype == object:
            if f.op not in ("=", "!="):
                raise ValueError(f"filter {str(f)!r}: {f.name} is categorical; compare it with = or !=")
            value = _category(f.value)
            present = np.array([v is not None for v in column], dtype=bool)
            return present & ((column == value) if f.op == "=" else (column != value))
        if isinstance(f.value, str):
            raise ValueError(f"filter {str(f)!r}: {f.name} is a number; compare it with a number")
        return _OPS[f.op](column, f.value)

    def select(self, states: Sequence[TrialState], filters: Sequence[TrialFilter]) -> np.ndarray:
        keep = np.ones(len(self.ids), dtype=bool)
        if states:
            keep &= np.isin(self.state, [s.value for s in states])
        for f in filters:
            keep &= self.matches(f)
        return np.flatnonzero(keep)

    def ordered(self, rows: np.ndarray, sort: str, order: str) -> np.ndarray:
        """``rows`` sorted by a column; trials without a value go last either way, the number breaks ties."""
        if sort == "number":
            key = self.number[rows].astype(float)
        elif sort == "state":
            key = np.unique(self.state, return_inverse=True)[1][rows].astype(float)
        elif sort in TIME_COLUMNS:
            key = self.times[sort][rows]
        elif sort.startswith("metrics.") and METRIC_NAME.fullmatch(sort.removeprefix("metrics.")) or sort.startswith(ARCH):
            name = sort.removeprefix("metrics.")
            column = self.column(name, f"sort {sort!r}")
            if column.dtype == object:  # categorical: in the order of its values; missing ones last
                present = np.array([v is not None for v in column], dtype=bool)
                codes = np.full(len(column), np.nan)
                codes[present] = np.unique(column[present].astype(str), return_inverse=True)[1]
                column = codes
            key = column[rows]
        else:
            raise ValueError(f"cannot sort by {sort!r}; use one of {', '.join(SORT_COLUMNS)}, metrics.<name> or arch.<key>")
        sign = -1.0 if order == "desc" else 1.0
        missing = np.isnan(key)
        return rows[np.lexsort((sign * self.number[rows], sign * np.where(missing, 0.0, key), missing))]


def _csv_chunks(columns: JobColumns, chunk: int) -> Iterator[str]:
    """The CSV of :meth:`DashboardQueries.trials_csv`, ``chunk`` rows at a time."""
    names = [name for name in METRICS if name in columns.metrics] + sorted(set(columns.metrics) - set(METRICS))
    keys = columns.arch_keys
    times = {name: [_utc_iso(t) for t in columns.times[name]] for name in ("started_at", "finished_at")}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "number", "state", *(ARCH + k for k in keys), *names, "started_at", "finished_at"])
    for i, trial_id in enumerate(columns.ids):
        arch = columns.arch[i]
        writer.writerow([
            trial_id, int(columns.number[i]), str(columns.state[i]), *(_csv_value(arch.get(k)) for k in keys),
            *("" if np.isnan(v) else _csv_metric(n, float(v)) for n in names for v in [columns.metrics[n][i]]),
            times["started_at"][i], times["finished_at"][i],
        ])
        if (i + 1) % chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


class ColumnCache:
    """Snapshots of the most recently viewed jobs, each brought up to date when asked for."""

    def __init__(self, max_jobs: int = 32) -> None:
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, JobColumns] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, s: Session, job_id: str) -> JobColumns:
        with self._guard:
            lock = self._locks.setdefault(job_id, threading.Lock())
        with lock:  # one refresh per job at a time; the others then find it fresh
            cached = self._jobs.get(job_id)
            base = select(*_ROW_COLUMNS).where(TrialRow.job_id == job_id)
            if cached is None:
                columns = JobColumns.build(s.execute(base).all())
            elif cached.latest is None:
                columns = cached.patched(s.execute(base).all())
            else:
                columns = cached.patched(s.execute(base.where(TrialRow.updated_at >= cached.latest - OVERLAP)).all())
            with self._guard:
                self._jobs[job_id] = columns
                self._jobs.move_to_end(job_id)
                while len(self._jobs) > self.max_jobs:
                    evicted, _ = self._jobs.popitem(last=False)
                    self._locks.pop(evicted, None)
            return columns


class DashboardQueries:
    """Read-only views of one store's jobs and trials, as one viewer may see them."""

    def __init__(self, store: Store, cache: ColumnCache | None = None) -> None:
        self.store = store
        self.engine = store.engine
        self.cache = cache or ColumnCache()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @staticmethod
    def _visible(s: Session, job_id: str, viewer: Principal | None) -> str:
        """The job's full id (``job_id`` may be a unique prefix); NotFound unless the viewer may see it."""
        mine = () if viewer is None or viewer.is_admin else (JobRow.owner == viewer.owner,)
        job_id = resolve_id(s, JobRow.id, job_id, "job", *mine)
        owner = s.scalar(select(JobRow.owner).where(JobRow.id == job_id))
        if owner is None or (viewer is not None and not viewer.is_admin and owner != viewer.owner):
            raise NotFound(f"job {job_id} not found")
        return job_id

    def job_id(self, job_id: str, viewer: Principal | None) -> str:
        """The job's full id (``job_id`` may be a unique prefix), if the viewer may see the job."""
        with self._read() as s:
            return self._visible(s, job_id, viewer)

    def job_spec(self, job_id: str, viewer: Principal | None) -> dict[str, Any]:
        """The job's stored spec, if the viewer may see the job."""
        with self._read() as s:
            job_id = self._visible(s, job_id, viewer)
            return s.scalar(select(JobRow.spec).where(JobRow.id == job_id))

    def columns(self, job_id: str, viewer: Principal | None) -> JobColumns:
        """The job's up-to-date snapshot, if the viewer may see the job."""
        with self._read() as s:
            return self.cache.get(s, self._visible(s, job_id, viewer))

    # -- the trials table -----------------------------------------------------------------------

    def trial_table(
        self,
        job_id: str,
        viewer: Principal | None,
        states: Sequence[TrialState] = (),
        filters: Sequence[TrialFilter] = (),
        sort: str = "number",
        order: Literal["asc", "desc"] = "asc",
        offset: int = 0,
        limit: int = 50,
    ) -> Row:
        """One page of a job's trials, sorted and filtered, with the count of all that match (a :class:`TrialTable`);
        :class:`BadQuery` for a filter or sort the job cannot answer."""
        with self._read() as s:
            columns = self.cache.get(s, self._visible(s, job_id, viewer))
            try:
                selected = columns.select(states, filters)
            except ValueError as exc:
                raise BadQuery("filter", str(exc)) from None
            try:
                rows = columns.ordered(selected, sort, order)
            except ValueError as exc:
                raise BadQuery("sort", str(exc)) from None
            page = [columns.ids[i] for i in rows[offset:offset + limit]]
            items = self._summaries(s, self._rows(s, page))
        for item in items:  # the table shows a parent by its number
            parent = columns.position.get(item["parent_id"] or "")
            item["parent_number"] = int(columns.number[parent]) if parent is not None else None
        return {
            "items": items, "arch_keys": columns.arch_keys, "total": len(rows), "offset": offset, "limit": limit,
            "sort": sort, "order": order,
        }

    @staticmethod
    def _rows(s: Session, trial_ids: Sequence[str]) -> list[Any]:
        """The table columns of the trials with these ids, in this order (no architecture or outputs)."""
        if not trial_ids:
            return []
        found = {r.id: r for r in s.execute(select(*_SUMMARY_COLUMNS).where(TrialRow.id.in_(list(trial_ids))))}
        return [found[i] for i in trial_ids if i in found]

    @staticmethod
    def _summaries(s: Session, rows: Sequence[Any]) -> list[Row]:
        """:class:`TrialSummary` rows as JSON-ready dicts (cheaper than models for a page of 500)."""
        return [
            {
                "id": r.id, "job_id": r.job_id, "number": r.number, "state": r.state, "parent_id": r.parent_id,
                "metrics": {k: _finite(v) for k, v in (r.metrics or {}).items()}, "arch": flatten(r.arch or {}),
                "error": r.error, "attempts": r.attempts,
                "created_at": _iso(r.created_at), "started_at": _iso(r.started_at), "finished_at": _iso(r.finished_at),
                "updated_at": _iso(r.updated_at), "has_model": bool(r.has_model),
            }
            for r in rows
        ]

    def summaries(self, trial_ids: Sequence[str], viewer: Principal | None) -> list[Row]:
        """Table rows of the given trials that the viewer may see (others are left out), in the given order."""
        if not trial_ids:
            return []
        with self._read() as s:
            stmt = select(*_SUMMARY_COLUMNS).join(JobRow, JobRow.id == TrialRow.job_id).where(TrialRow.id.in_(list(trial_ids)))
            if viewer is not None and not viewer.is_admin:
                stmt = stmt.where(JobRow.owner == viewer.owner)
            rows = {r.id: r for r in s.execute(stmt)}
            return self._summaries(s, [rows[i] for i in trial_ids if i in rows])

    def children(self, trial_id: str, job_id: str) -> list[Row]:
        """Trials of the job whose parent is the given trial, in number order."""
        with self._read() as s:
            rows = s.execute(
                select(*_SUMMARY_COLUMNS).where(TrialRow.job_id == job_id, TrialRow.parent_id == trial_id).order_by(TrialRow.number)
            ).all()
            return self._summaries(s, rows)

    # -- charts ---------------------------------------------------------------------------------

    def points(self, job_id: str, viewer: Principal | None, metrics: Sequence[str] = CHART_METRICS) -> Row:
        """A few metrics of every trial, as columns (a :class:`TrialPoints`)."""
        names = list(dict.fromkeys(check_metric_name(m) for m in metrics))
        columns = self.columns(job_id, viewer)
        return {
            "id": columns.ids,
            "number": columns.number.tolist(),
            "state": columns.state.tolist(),
            "parent_id": columns.parent_id,
            "finished_at": _nullable(columns.times["finished_at"]),
            "metrics": {name: _nullable(columns.metric(name)) for name in names},
            "arch": columns.arch,
        }

    def density_matrix(
        self,
        job_id: str,
        viewer: Principal | None,
        sort: str = "number",
        order: Literal["asc", "desc"] = "asc",
        limit: int = 100,
    ) -> Row:
        """Per-layer densities of up to ``limit`` finished trials that reported layers, in the given order (a :class:`DensityMatrix`)."""
        with self._read() as s:
            columns = self.cache.get(s, self._visible(s, job_id, viewer))
            candidates = [columns.ids[i] for i in columns.ordered(np.flatnonzero(np.isin(columns.state, FINISHED_STATES)), sort, order)]
            chosen: list[str] = []
            for start in range(0, len(candidates), 4 * limit):
                chunk = candidates[start:start + 4 * limit]
                with_layers = set(s.scalars(select(TrialLayerRow.trial_id).where(TrialLayerRow.trial_id.in_(chunk)).distinct()))
                chosen += [t for t in chunk if t in with_layers][: limit - len(chosen)]
                if len(chosen) >= limit:
                    break
            trials = self._summaries(s, self._rows(s, chosen))
            layer_rows = s.execute(
                select(TrialLayerRow.trial_id, TrialLayerRow.position, TrialLayerRow.name, TrialLayerRow.density)
                .where(TrialLayerRow.trial_id.in_(chosen))
            ).all() if chosen else []
        # Layers in the order they sit in the network; deeper trials add rows below.
        position: dict[str, int] = {}
        for _, pos, name, _ in sorted(layer_rows, key=lambda r: r[1]):
            position.setdefault(name, pos)
        layers = sorted(position, key=lambda name: (position[name], name))
        index = {t["id"]: j for j, t in enumerate(trials)}
        row_of = {name: i for i, name in enumerate(layers)}
        density: list[list[float | None]] = [[None] * len(trials) for _ in layers]
        for trial_id, _, name, value in layer_rows:
            density[row_of[name]][index[trial_id]] = _finite(value)
        return {"layers": layers, "trials": trials, "density": density}

    def histories(self, job_id: str, trial_ids: Sequence[str], viewer: Principal | None) -> list[TrialHistory]:
        """Per-epoch metrics of the given trials of one job (trials of other jobs are left out)."""
        with self._read() as s:
            job_id = self._visible(s, job_id, viewer)
            numbers = dict(
                s.execute(
                    select(TrialRow.id, TrialRow.number).where(TrialRow.job_id == job_id, TrialRow.id.in_(list(trial_ids)))
                ).all()
            )
            epochs = s.execute(
                select(TrialEpochRow.trial_id, TrialEpochRow.epoch, TrialEpochRow.metrics)
                .where(TrialEpochRow.trial_id.in_(list(numbers)))
                .order_by(TrialEpochRow.trial_id, TrialEpochRow.epoch)
            ).all() if numbers else []
        by_trial: dict[str, list[EpochPoint]] = {trial_id: [] for trial_id in numbers}
        for trial_id, epoch, metrics in epochs:
            by_trial[trial_id].append(EpochPoint(epoch=epoch, metrics=metrics))
        return [
            TrialHistory(trial_id=trial_id, number=numbers[trial_id], history=by_trial[trial_id])
            for trial_id in trial_ids if trial_id in numbers
        ]

    def best_metrics(self, trial_ids: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """Number and metrics of each given trial (the jobs' best trials, for the jobs list)."""
        if not trial_ids:
            return {}
        with self._read() as s:
            rows = s.execute(
                select(TrialRow.id, TrialRow.number, TrialRow.metrics).where(TrialRow.id.in_(list(trial_ids)))
            ).all()
        return {r[0]: (r[1], {k: _finite(v) for k, v in (r[2] or {}).items()}) for r in rows}

    # -- CSV --------------------------------------------------------------------------------------

    def trials_csv(self, job_id: str, viewer: Principal | None, chunk: int = 500) -> tuple[str, Iterator[str]]:
        """The job's full id, and every trial of the job as CSV, ``chunk`` rows at a time: ``id``,
        ``number``, ``state``, one ``arch.KEY`` column per architecture key, the metrics (the registry's
        order, then any others by name), ``started_at``, ``finished_at``. A missing value is an empty field.

        The job is checked and its snapshot read here, before the answer starts: a 404 is still a 404."""
        with self._read() as s:
            job_id = self._visible(s, job_id, viewer)
            return job_id, _csv_chunks(self.cache.get(s, job_id), chunk)

    # -- changes, for server-sent events -------------------------------------------------------

    def changed_trials(self, job_id: str, since: datetime, limit: int = 500) -> list[Row]:
        """Trials of a job whose ``updated_at`` is at or after ``since``, oldest change first.

        The caller checked the viewer once when the stream opened.
        """
        with self._read() as s:
            rows = s.execute(
                select(*_SUMMARY_COLUMNS)
                .where(TrialRow.job_id == job_id, TrialRow.updated_at >= since)
                .order_by(TrialRow.updated_at, TrialRow.number)
                .limit(limit)
            ).all()
            return self._summaries(s, rows)

    def new_epochs(self, trial_ids: Sequence[str], after_id: int, since: datetime | None = None) -> list[EpochChange]:
        """Epoch reports of the given trials with a row id above ``after_id`` (or, given ``since``, made since then)."""
        if not trial_ids:
            return []
        newer = TrialEpochRow.id > after_id
        if since is not None:
            newer = newer | (TrialEpochRow.created_at >= since)
        with self._read() as s:
            rows = s.execute(
                select(TrialEpochRow.id, TrialEpochRow.trial_id, TrialEpochRow.epoch, TrialEpochRow.metrics)
                .where(TrialEpochRow.trial_id.in_(list(trial_ids)), newer)
                .order_by(TrialEpochRow.id)
            ).all()
        return [EpochChange(id=r[0], trial_id=r[1], epoch=r[2], metrics=r[3]) for r in rows]

    def last_epoch_id(self) -> int:
        """The highest epoch row id so far (an index lookup): a stream reports only epochs after it."""
        with self._read() as s:
            return int(s.scalar(select(func.max(TrialEpochRow.id))) or 0)


__all__ = [
    "CHART_METRICS", "BadQuery", "ColumnCache", "DashboardQueries", "DensityMatrix", "EpochChange", "JobColumns",
    "TrialFilter", "TrialHistory", "TrialPoints", "TrialSummary", "TrialTable",
]

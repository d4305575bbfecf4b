"""Where predictors, their online corrections, observations and calibration data live.

Under ``$NAS_HOME/latency/``, keyed by :meth:`TargetIdentity.key`:

* ``predictors/<key>.json``: a machine's calibrated predictor (``nas hardware calibrate``);
* ``data/<key>.json``: the measurements it was fitted on (``nas hardware evaluate`` reads them);
* ``observations/<key>.jsonl``: measured latencies of models (:func:`nas.latency.refine`), one
  JSON object a line, from which the whole-model correction is refitted;
* ``reference/<key>.json``: this machine's timing of the reference model, to rescale a predictor
  calibrated elsewhere (the bundled default) without calibrating.

The package ships default predictors in ``nas/latency/data/``. Every file is JSON; writes go to
a temporary file first and are renamed into place, so readers never see half a file.

Observations are read through an :class:`ObservationSource`: these files by default, for library
and CLI use; the service points every process at its database instead
(:func:`use_observations`), so that what workers measure reaches the processes that predict.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, Protocol

from nas.latency.predictor import NoPredictor, Predictor
from nas.timing.targets import TargetIdentity

BUNDLED_DIR = Path(__file__).with_name("data")
_cache: dict[Path, tuple[float, Predictor]] = {}
_cache_lock = threading.Lock()


def home() -> Path:
    """``$NAS_HOME/latency`` (``NAS_HOME`` defaults to ``~/.local/share/nas``)."""
    root = os.environ.get("NAS_HOME") or Path.home() / ".local" / "share" / "nas"
    return Path(root).expanduser() / "latency"


def path_for(kind: str, identity: TargetIdentity, suffix: str = ".json") -> Path:
    return home() / kind / f"{identity.key()}{suffix}"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)  # mkstemp's mode 0600: NAS_HOME is private to the user the service runs as
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_predictor(predictor: Predictor, path: Path | None = None) -> Path:
    path = path or path_for("predictors", predictor.identity)
    write_json(path, predictor.to_json())
    return path


def load_predictor_file(path: Path) -> Predictor:
    """A predictor from ``path``, cached per process until the file changes."""
    mtime = path.stat().st_mtime
    with _cache_lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    predictor = Predictor.from_json(read_json(path))
    with _cache_lock:
        _cache[path] = (mtime, predictor)
    return predictor


def bundled_predictors() -> list[Path]:
    return sorted(BUNDLED_DIR.glob("*.json")) if BUNDLED_DIR.is_dir() else []


def find_predictor(identity: TargetIdentity) -> tuple[Predictor, str]:
    """The best predictor for ``identity`` and where it came from.

    In order: this machine's calibration for exactly this identity ("machine"); one for the same
    machine, threads and torch at another batch size ("machine-other-batch"); a bundled one for the
    same target, preferring the same threads and batch size ("bundled"). :class:`NoPredictor` if
    none fits.
    """
    exact = path_for("predictors", identity)
    if exact.is_file():
        return load_predictor_file(exact), "machine"
    folder = home() / "predictors"
    if folder.is_dir():
        for path in sorted(folder.glob(f"{identity.target}-*.json")):
            try:
                candidate = load_predictor_file(path)
            except (ValueError, KeyError, OSError):
                continue
            if candidate.identity.same_machine(identity):
                return candidate, "machine-other-batch"
    bundled = []
    for path in bundled_predictors():
        candidate = load_predictor_file(path)
        if candidate.identity.target == identity.target:
            other = candidate.identity
            bundled.append(((other.num_threads != identity.num_threads, other.batch_size != identity.batch_size), path))
    if bundled:
        return load_predictor_file(min(bundled)[1]), "bundled"
    raise NoPredictor(
        f"no latency predictor for target {identity.target!r} on {identity.device!r}; "
        f"run `nas hardware calibrate --target {identity.target}`"
    )


def reference_timing(identity: TargetIdentity) -> float | None:
    path = path_for("reference", identity)
    if not path.is_file():
        return None
    return float(read_json(path)["reference_ms"])


def save_reference_timing(identity: TargetIdentity, reference_ms: float) -> None:
    write_json(path_for("reference", identity), {"reference_ms": reference_ms, "measured_at": time.time()})


def append_observation(target_key: str, record: Mapping[str, Any]) -> Path:
    """Append one JSON line; a single ``write`` on an ``O_APPEND`` file, so concurrent writers interleave whole lines."""
    path = home() / "observations" / f"{target_key}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(dict(record)) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return path


def observations(target_key: str, predictor_id: str, limit: int) -> list[dict[str, Any]]:
    """The latest ``limit`` observations made with the predictor ``predictor_id``."""
    path = home() / "observations" / f"{target_key}.jsonl"
    if not path.is_file():
        return []
    found = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if record.get("predictor_id") == predictor_id:
                found.append(record)
    return found[-limit:]


class ObservationSource(Protocol):
    """Where a process keeps and finds latency observations (records made by :func:`nas.latency.observe`)."""

    def add(self, record: Mapping[str, Any]) -> None:
        """Keep ``record`` (it names its ``target_key`` and ``predictor_id``)."""

    def records(self, target_key: str, predictor_id: str, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` records of this target and predictor, oldest first."""

    def revision(self, target_key: str, predictor_id: str) -> Hashable:
        """A cheap token that changes whenever a record of this target and predictor is added."""


class FileObservations:
    """Observations in ``$NAS_HOME/latency/observations/`` (the default: library and CLI use)."""

    def add(self, record: Mapping[str, Any]) -> None:
        append_observation(record["target_key"], record)

    def records(self, target_key: str, predictor_id: str, limit: int) -> list[dict[str, Any]]:
        return observations(target_key, predictor_id, limit)

    def revision(self, target_key: str, predictor_id: str) -> Hashable:
        path = home() / "observations" / f"{target_key}.jsonl"
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return (str(path), stat.st_mtime_ns, stat.st_size)  # the path: NAS_HOME may change


_source: ObservationSource = FileObservations()


def use_observations(source: ObservationSource | None) -> None:
    """Make ``source`` this process's observations (``None``: the files under ``NAS_HOME`` again).

    The service calls this at start-up in the dispatcher and in every API process, with its
    database, so that predictions everywhere use the correction refitted on what every worker
    measured.
    """
    global _source
    _source = FileObservations() if source is None else source


def observation_source() -> ObservationSource:
    """The observations this process refines and predicts with (see :func:`use_observations`)."""
    return _source

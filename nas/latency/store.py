"""Where predictors, their online corrections, observations and calibration data live.

Under ``$NAS_HOME/latency/``, keyed by :meth:`TargetIdentity.key`:

* ``predictors/<key>.json``: a machine's calibrated predictor (``nas hardware calibrate``);
* ``data/<key>.json``: the measurements it was fitted on (``nas hardware evaluate`` reads them);
* ``observations/<key>.jsonl``: measured latencies of finished trials, one JSON object a line;
* ``corrections/<key>.json``: the whole-model correction refitted on those observations;
* ``reference/<key>.json``: this machine's timing of the reference model, to rescale a predictor
  calibrated elsewhere (the bundled default) without calibrating.

The package ships default predictors in ``nas/latency/data/``. Every file is JSON; writes go to
a temporary file first and are renamed into place, so readers never see half a file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas.latency.predictor import NoPredictor, Predictor
from nas.latency.targets import TargetIdentity

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
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from workers running as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` + ``.lock`` across processes (Ray workers refine concurrently)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def append_observation(identity: TargetIdentity, record: dict[str, Any]) -> Path:
    """Append one JSON line; a single ``write`` on an ``O_APPEND`` file, so concurrent writers interleave whole lines."""
    path = path_for("observations", identity, ".jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return path


def observations(identity: TargetIdentity, predictor_id: str, limit: int = 2000) -> list[dict[str, Any]]:
    """The latest ``limit`` observations made with the predictor ``predictor_id``."""
    path = path_for("observations", identity, ".jsonl")
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

"""Trial artifacts and stored datasets on disk under ``NAS_HOME/artifacts``; paths are built from ids only."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from nas.settings import Settings
from nas.store.store import Artifact


def _write_private(artifact_dir: Path, relative: Path, data: bytes) -> None:
    """Write atomically (temp file, then rename) so a crash never leaves half a file; mode 0600,
    in folders of mode 0700: another user of the machine reads no tenant's model."""
    target = artifact_dir / relative
    artifact_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, target)


def save_model(artifact_dir: Path, job_id: str, trial_id: str, data: bytes, fmt: str = "safetensors") -> Artifact:
    """Keep a trial's model under its job's folder (:func:`job_folder`)."""
    relative = Path(job_id) / f"{trial_id}.{fmt}"
    _write_private(artifact_dir, relative, data)
    return Artifact(
        trial_id=trial_id,
        kind="model",
        format=fmt,
        path=relative.as_posix(),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def datasets_dir(artifact_dir: Path) -> Path:
    """The folder of every stored dataset's folder."""
    return artifact_dir / "datasets"


def dataset_folder(artifact_dir: Path, dataset_id: str) -> Path:
    """Where a stored dataset's files lie: ``data.npz`` (its canonical splits, for uploads) and,
    for image sets, ``samples.png``."""
    return datasets_dir(artifact_dir) / dataset_id


def models_dir(artifact_dir: Path) -> Path:
    """The folder of every stored model's folder."""
    return artifact_dir / "models"


def model_file(artifact_dir: Path, model_id: str) -> Path:
    """Where a stored model's ONNX file lies: ``models/<id>/model.onnx``."""
    return models_dir(artifact_dir) / model_id / "model.onnx"


def save_measurement_model(artifact_dir: Path, task_id: str, onnx_bytes: bytes) -> str:
    """Keep the ONNX file a measurement task's agent downloads; returns its path under ``artifact_dir``."""
    relative = Path("measurements") / f"{task_id}.onnx"
    _write_private(artifact_dir, relative, onnx_bytes)
    return relative.as_posix()


def job_folder(artifact_dir: Path, job_id: str) -> Path:
    """Where a job's trial models lie: ``<job id>/<trial id>.<format>``."""
    return artifact_dir / job_id


def tune_folder(home: Path, job_id: str) -> Path:
    """Where Ray Tune keeps a job's experiment state while its runner runs it."""
    return home / "ray_results" / f"job-{job_id}"


def remove_job_files(settings: Settings, job_id: str) -> None:
    """Remove every file the server keeps for a (deleted) job: its models and Tune's state."""
    shutil.rmtree(job_folder(settings.artifact_dir, job_id), ignore_errors=True)
    shutil.rmtree(tune_folder(settings.home, job_id), ignore_errors=True)

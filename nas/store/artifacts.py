"""Trial artifacts and stored datasets on disk under ``NAS_HOME/artifacts``; paths are built from ids only."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from nas.settings import Settings
from nas.store.store import Artifact


def save_model(artifact_dir: Path, job_id: str, trial_id: str, data: bytes, fmt: str = "safetensors") -> Artifact:
    """Write atomically (temp file, then rename) so a crash never leaves half a model; mode 0600,
    in folders of mode 0700: another user of the machine reads no tenant's model."""
    relative = Path(job_id) / f"{trial_id}.{fmt}"  # under job_folder
    target = artifact_dir / relative
    artifact_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, target)
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

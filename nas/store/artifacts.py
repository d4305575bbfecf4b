"""Trial artifacts on disk under ``NAS_HOME/artifacts``; paths are built from ids only."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nas.store.store import Artifact


def save_model(artifact_dir: Path, job_id: str, trial_id: str, data: bytes, fmt: str = "safetensors") -> Artifact:
    """Write atomically (temp file, then rename) so a crash never leaves half a model."""
    relative = Path(job_id) / f"{trial_id}.{fmt}"
    target = artifact_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return Artifact(
        trial_id=trial_id,
        kind="model",
        format=fmt,
        path=relative.as_posix(),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )

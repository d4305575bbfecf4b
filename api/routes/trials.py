"""Trials: one trial with its history and layers, and its model as safetensors or ONNX."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request, status
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.responses import errors
from api.workpool import WorkError, work_pool
from nas.errors import NotFound
from nas.settings import Settings
from nas.specs import Trial, TrialState
from nas.store import Artifact, Principal, Store

router = APIRouter(prefix="/trials", tags=["trials"])
log = logging.getLogger(__name__)



@router.get("/{trial_id}", response_model=Trial, responses=errors(404))
async def get_trial(trial_id: str, store: StoreDep, principal: PrincipalDep) -> Trial:
    return store.get_trial(trial_id, principal)


@router.get(
    "/{trial_id}/model",
    response_class=FileResponse,
    responses={
        **errors(404, 422),
        200: {"content": {"application/octet-stream": {}}, "description": "the model file"},
        500: {"description": "the ONNX export failed; the detail says why"},
        503: {"description": "the server is busy exporting (Retry-After)"},
    },
)
async def download_model(
    request: Request,
    trial_id: str,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    format: Literal["safetensors", "onnx"] = "safetensors",
) -> FileResponse:
    """The trained model: ``safetensors`` (weights as the forward pass sees them, and their masks)
    or ``onnx`` (masks baked in), which is exported from the stored model on first request, in a
    worker process (see :mod:`api.workpool`), and kept beside it. 404 says why a trial has no model."""
    trial = store.get_trial(trial_id, principal)
    if not trial.has_model:
        raise NotFound(no_model_reason(trial))
    try:
        artifact = store.get_artifact(trial_id, "model", format, principal)
    except NotFound:
        if format != "onnx":
            raise
        artifact = await _export_onnx(request, store, settings, trial, principal)
    path = _artifact_file(settings, artifact, trial_id)
    return FileResponse(path, media_type="application/octet-stream", filename=f"trial-{trial_id}.{format}")


def no_model_reason(trial: Trial) -> str:
    """Why ``trial`` has no model, in words a user can act on."""
    why = {
        TrialState.queued: "it has not run yet (queued)",
        TrialState.running: "it is still running; the model is saved when it completes",
        TrialState.pruned: "early stopping pruned it before its last epoch",
        TrialState.infeasible: "it was infeasible under the job's constraints and never trained",
        TrialState.failed: f"it failed: {trial.error}" if trial.error else "it failed",
        TrialState.complete: "its model was not stored",
    }[trial.state]
    return f"trial {trial.id} has no model: {why}"


def _artifact_file(settings: Settings, artifact: Artifact, trial_id: str) -> Path:
    path = (settings.artifact_dir / artifact.path).resolve()
    if not path.is_relative_to(settings.artifact_dir.resolve()) or not path.is_file():
        raise NotFound(f"the {artifact.format} model of trial {trial_id} is missing from the artifact store")
    return path


async def _export_onnx(request: Request, store: Store, settings: Settings, trial: Trial, principal: Principal) -> Artifact:
    """Export the stored safetensors model to ONNX in a worker process and keep it as the trial's
    ``onnx`` artifact. Two requests for the same trial may both export; the second write replaces
    the first with the same bytes."""
    from nas.store.artifacts import save_model

    source = store.get_artifact(trial.id, "model", "safetensors", principal)
    path = _artifact_file(settings, source, trial.id)
    data = await work_pool(request).run(principal.owner, export_in_worker, str(path), trial.id)

    def keep() -> Artifact:
        artifact = save_model(settings.artifact_dir, trial.job_id, trial.id, data, fmt="onnx")
        store.add_artifact(artifact)
        return artifact

    artifact = await run_in_threadpool(keep)
    log.info("exported trial %s to ONNX (%d bytes)", trial.id, len(data))
    return artifact


def export_in_worker(path: str, trial_id: str) -> bytes | WorkError:
    """ONNX bytes of the safetensors model at ``path``, in a worker process; or the HTTP error."""
    from nas.export import ExportError, to_onnx

    try:
        return to_onnx(Path(path).read_bytes())
    except (ExportError, ValueError, KeyError) as exc:
        log.exception("ONNX export of trial %s failed", trial_id)
        return WorkError(status.HTTP_500_INTERNAL_SERVER_ERROR, f"ONNX export of trial {trial_id} failed: {exc}")

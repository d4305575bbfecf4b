"""Trials: one trial with its history and layers, and its model."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.responses import errors
from nas.errors import NotFound
from nas.specs import Trial

router = APIRouter(prefix="/trials", tags=["trials"])


@router.get("/{trial_id}", response_model=Trial, responses=errors(404))
async def get_trial(trial_id: str, store: StoreDep, principal: PrincipalDep) -> Trial:
    return store.get_trial(trial_id, principal)


@router.get("/{trial_id}/model", response_class=FileResponse, responses=errors(404, 422))
def download_model(
    trial_id: str,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    format: Literal["safetensors", "onnx"] = "safetensors",
) -> FileResponse:
    artifact = store.get_artifact(trial_id, "model", format, principal)
    path = (settings.artifact_dir / artifact.path).resolve()
    if not path.is_relative_to(settings.artifact_dir.resolve()) or not path.is_file():
        raise NotFound(f"the {format} model of trial {trial_id} is missing from the artifact store")
    return FileResponse(path, media_type="application/octet-stream", filename=f"trial-{trial_id}.{format}")

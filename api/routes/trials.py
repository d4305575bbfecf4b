"""Trials: one trial with its history and layers, and its model as safetensors, ONNX, the torch
inference model, or its sparsity report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.responses import errors
from api.workpool import WorkError, work_pool
from nas.errors import NotFound
from nas.model_formats import EXPORTED, SUFFIXES, Format
from nas.settings import Settings
from nas.specs import Annotation, Trial, TrialState
from nas.store import Artifact, Principal, Store

if TYPE_CHECKING:
    from nas.export import Exported

router = APIRouter(prefix="/trials", tags=["trials"])
log = logging.getLogger(__name__)

ARTIFACT_FORMATS = {"onnx": "inference.onnx", "inference": "inference.safetensors", "report": "report.json"}
"""The artifact each export is kept as; ``onnx`` artifacts (the masked dense ONNX of earlier versions) are not served."""
_REPORTED_METRICS = ("latency_ms", "latency_median_ms", "masked_latency_ms", "accuracy", "sparsity")


@router.get("/{trial_id}", response_model=Trial, responses=errors(404))
async def get_trial(trial_id: str, store: StoreDep, principal: PrincipalDep) -> Trial:
    return store.get_trial(trial_id, principal)


@router.patch("/{trial_id}", response_model=Trial, responses=errors(404, 422))
def patch_trial(trial_id: str, body: Annotation, store: StoreDep, principal: PrincipalDep) -> Trial:
    """Set the trial's note and merge its user attributes (its job's owner or an admin); 422 naming
    ``user_attrs`` when the merged attributes would pass the cap."""
    try:
        store.annotate_trial(trial_id, body, principal)
    except ValueError as exc:
        raise annotation_refused(exc) from None
    return store.get_trial(trial_id, principal)


def annotation_refused(exc: ValueError) -> HTTPException:
    """The 422 for user attributes that, merged into those kept, would pass the cap (:data:`nas.specs.MAX_ANNOTATION`)."""
    return HTTPException(422, [{"loc": ["body", "user_attrs"], "msg": str(exc), "type": "value_error"}])


@router.get(
    "/{trial_id}/model",
    response_class=FileResponse,
    responses={
        **errors(404, 422),
        200: {
            "content": {"application/octet-stream": {}, "application/json": {}},
            "description": "the model file, or the sparsity report (JSON)",
        },
        500: {"description": "the export failed, or the ONNX file does not compute what torch does; the detail says why"},
        503: {"description": "the server is busy exporting (Retry-After)"},
    },
)
async def download_model(
    request: Request,
    trial_id: str,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    format: Format = "safetensors",
) -> FileResponse:
    """The trained model in one of four formats (see :mod:`nas.export`): ``safetensors`` (the stored
    masked model: weights as the forward pass sees them, and their masks); ``onnx`` (the sparse
    inference model the trial's latency was measured on: shrunk layers smaller, CSR layers stored
    dense with their zeros, checked against torch in onnxruntime); ``inference`` (the torch sparse
    inference model, CSR layers included: safetensors plus its JSON description); ``report`` (the
    per-layer sparsity report, JSON). The last three are made together on the first request for any
    of them, in a worker process (see :mod:`api.workpool`), kept beside the stored model, and the
    ONNX file's measured latency is added to the trial's metrics as ``onnx_latency_ms``.
    404 says why a trial has no model."""
    trial = store.get_trial(trial_id, principal)
    trial_id = trial.id  # the path may hold a unique prefix
    if not trial.has_model:
        raise NotFound(no_model_reason(trial))
    kind = ARTIFACT_FORMATS.get(format, format)
    try:
        artifact = store.get_artifact(trial_id, "model", kind, principal)
    except NotFound:
        if format == "safetensors":
            raise
        artifact = (await _export(request, store, settings, trial, principal))[format]
    path = _artifact_file(settings, artifact, trial_id)
    media = "application/json" if format == "report" else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=f"trial-{trial_id}.{SUFFIXES[format]}")


@router.get(
    "/{trial_id}/log",
    response_class=PlainTextResponse,
    responses={**errors(404), 200: {"content": {"text/plain": {}}, "description": "the trial's log"}},
)
def trial_log(trial_id: str, store: StoreDep, principal: PrincipalDep) -> PlainTextResponse:
    """What the trial's code logged and warned on its worker, with its traceback if it failed: its
    end, size-capped (the text says where earlier lines were dropped). Stored with every epoch a
    running trial reports and when it ends; 404 says why a trial has none."""
    trial = store.get_trial(trial_id, principal)
    text = store.trial_log(trial.id, principal)
    if not text:
        raise NotFound(f"trial {trial.id} has no log: {_no_log_reason(trial)}")
    return PlainTextResponse(text)


def _no_log_reason(trial: Trial) -> str:
    if trial.state is TrialState.queued:
        return "it has not run yet (queued)"
    if trial.state is TrialState.running:
        return "it is running and has reported no epoch yet; its log is stored with each epoch"
    if trial.started_at is None:
        return f"it never ran ({trial.state.value}{': ' + trial.error if trial.error else ''})"
    return "its worker sent none (it ended before a report, or ran on an older version)"


def no_model_reason(trial: Trial) -> str:
    """Why ``trial`` has no model, in words a user can act on."""
    why = {
        TrialState.queued: "it has not run yet (queued)",
        TrialState.running: "it is still running; the model is saved when it completes",
        TrialState.pruned: "early stopping pruned it before its last epoch",
        TrialState.infeasible: "it was infeasible under the job's constraints and never trained",
        TrialState.failed: f"it failed: {trial.error}" if trial.error else "it failed",
        TrialState.complete: "its model was not stored",
        TrialState.cancelled: "its job was cancelled before it ended",
    }[trial.state]
    return f"trial {trial.id} has no model: {why}"


def _artifact_file(settings: Settings, artifact: Artifact, trial_id: str) -> Path:
    path = (settings.artifact_dir / artifact.path).resolve()
    if not path.is_relative_to(settings.artifact_dir.resolve()) or not path.is_file():
        raise NotFound(f"the {artifact.format} model of trial {trial_id} is missing from the artifact store")
    return path


async def _export(
    request: Request, store: Store, settings: Settings, trial: Trial, principal: Principal
) -> dict[str, Artifact]:
    """Make the trial's ONNX, inference and report exports from its stored safetensors model in a
    worker process, keep them as artifacts, and add ``onnx_latency_ms`` to its metrics. Two requests
    for the same trial may both export; the second's files and measurement replace the first's."""
    from nas.store.artifacts import save_model

    source = store.get_artifact(trial.id, "model", "safetensors", principal)
    path = _artifact_file(settings, source, trial.id)
    about = {
        "trial_id": trial.id,
        "job_id": trial.job_id,
        "number": trial.number,
        "metrics": {k: v for k, v in trial.metrics.items() if k in _REPORTED_METRICS},
    }
    layers = [layer.model_dump() for layer in trial.layers]
    exported = await work_pool(request).run(principal.owner, export_in_worker, str(path), trial.id, layers, about)

    def keep() -> dict[str, Artifact]:
        kept = {}
        for format in EXPORTED:
            kept[format] = save_model(
                settings.artifact_dir, trial.job_id, trial.id, exported.file(format), fmt=ARTIFACT_FORMATS[format]
            )
            store.add_artifact(kept[format])
        store.add_trial_metrics(trial.id, {"onnx_latency_ms": exported.report["onnx"]["latency_ms"]})
        return kept

    kept = await run_in_threadpool(keep)
    log.info("exported trial %s (ONNX %d bytes, inference %d bytes)", trial.id, len(exported.onnx), len(exported.inference))
    return kept


def export_in_worker(
    path: str, trial_id: str, layers: list[dict[str, Any]], about: dict[str, Any]
) -> Exported | WorkError:
    """The exports of the safetensors model at ``path``, in a worker process; or the HTTP error."""
    from nas.export import ExportError, export_trial

    try:
        return export_trial(Path(path).read_bytes(), layers, about)
    except (ExportError, ValueError, LookupError) as exc:  # LookupError: a key missing, or a stored model gone
        log.exception("export of trial %s failed", trial_id)
        detail = f"ONNX export of trial {trial_id} failed (its ONNX, inference and report files are made together): {exc}"
        return WorkError(status.HTTP_500_INTERNAL_SERVER_ERROR, detail)

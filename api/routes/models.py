"""Models: upload a trained network as ONNX, list, read, delete.

An upload streams to a temporary file under ``NAS_HOME/uploads`` exactly as a dataset's does
(:mod:`api.routes.datasets`), hashed on the way and refused with 413 the moment it passes
``NAS_LIMIT_MODEL_BYTES``. Accepting it parses user bytes (onnx, onnxruntime, the converter), so
that runs in a worker process of a pool of its own (:func:`api.workpool.model_pool`), killed past
``NAS_INGEST_TIMEOUT_S``: the
checks of :func:`nas.models.summary.read_model`, then the dense network's latency on each of the
server's targets. What is kept is the file itself, ``models/<id>/model.onnx``, which workers
receive through Ray (:mod:`workers.models`); any refusal leaves no file and no row. The service
never runs what a user sends: the file is read with onnx and converted over a closed operator set.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from api.responses import errors
from api.routes.datasets import MAX_NAME, UPLOAD_SUFFIX, _Form, _FormReader, upload_dir
from api.workpool import TimeLimit, WorkError, WorkerKilled, model_pool
from nas.errors import NotFound, QuotaExceeded
from nas.safe_text import check_printable
from nas.settings import Settings
from nas.specs import ModelRecord, Page
from nas.store import Principal, Store
from nas.store.artifacts import model_file, models_dir
from nas.store.tables import utcnow

router = APIRouter(prefix="/models", tags=["models"])
log = logging.getLogger(__name__)

FIELDS = ("name",)

_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the trained network as an ONNX file (weights inside it)"},
        "name": {"type": "string", "maxLength": MAX_NAME, "description": "defaults to the file's name without extension"},
    },
}  # fmt: skip


class ModelPage(Page):
    items: list[ModelRecord]


def too_large(limit: int) -> str:
    """What an upload past ``limit`` bytes is answered (413)."""
    return f"the model is larger than this server's limit of {limit} bytes (NAS_LIMIT_MODEL_BYTES)"


def remove_strays(store: Store, settings: Settings) -> None:
    """Remove model folders that no row names (an upload stopped midway by a killed server). Run at
    start, beside :func:`api.routes.datasets.remove_strays`."""
    folders = models_dir(settings.artifact_dir)
    if not folders.is_dir():
        return
    for folder in folders.iterdir():
        try:
            store.get_model(folder.name)
        except NotFound:
            log.info("removing %s: no stored model has it", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _invalid(field_name: str | None, message: str) -> HTTPException:
    """A 422 naming the field (``None``: the body as a whole) and what is wrong with it."""
    loc = ["body"] if field_name is None else ["body", field_name]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": loc, "msg": message, "type": "model_rejected"}])


async def _receive(request: Request, target: Path, max_file_bytes: int) -> _Form:
    kind, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise _invalid(None, "send the model as multipart/form-data: the ONNX file in part 'file', its name in 'name'")
    try:
        reader = _FormReader(boundary, target, max_file_bytes, FIELDS, too_large)
    except FormParserError as exc:
        raise _invalid(None, f"the body is not valid multipart/form-data: {exc}") from None
    try:
        async for chunk in request.stream():
            await reader.feed(chunk)
        return await reader.finish()
    finally:
        reader.close()


def _name(fields: dict[str, str], filename: str) -> str:
    name = fields.get("name") or Path(filename).name.split(".")[0] or "model"
    if len(name) > MAX_NAME:
        raise _invalid("name", f"the name is {len(name)} characters long; at most {MAX_NAME} are allowed")
    try:
        return check_printable(name)
    except ValueError as exc:
        raise _invalid("name", str(exc)) from None


def read_in_worker(source: str, limits: dict[str, Any]) -> dict[str, Any] | WorkError:
    """Accept the ONNX file at ``source``, in a worker process: the record's computed fields, or the
    422 naming the failed check. The dense latency is the 10th percentile of single-example calls
    on each target this machine has, the statistic trials report."""
    from nas.latency import available_targets, measure
    from nas.models.onnx_import import ModelLimits, ModelRejected
    from nas.models.summary import read_model

    try:
        info = read_model(Path(source), ModelLimits(**limits))
        latency = {target: measure(info.module, info.input_shape, target)["p10_ms"] for target in available_targets()}
    except ModelRejected as exc:
        return WorkError(422, [{"loc": ["body", "file"], "msg": str(exc), "type": "model_rejected"}])
    except Exception as exc:  # a parser's or converter's own error on a malformed file is still the file's problem
        log.warning("reading an uploaded model failed", exc_info=True)
        why = str(exc).replace(source, "the file")  # an upload's temporary path is the server's business
        return WorkError(422, [{"loc": ["body", "file"], "msg": f"the model could not be read: {why}"[:1000],
                                "type": "model_rejected"}])  # fmt: skip
    return {
        "input_shape": list(info.input_shape), "num_outputs": info.num_outputs, "params": info.params,
        "layers": info.layers, "opset": info.opset, "producer": info.producer, "dense_latency_ms": latency,
    }  # fmt: skip


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelRecord,
    responses={
        **errors(413, 422),
        200: {"model": ModelRecord, "description": "this owner stored the same file before: that model"},
        503: {"description": "the server is busy reading other uploads (Retry-After)"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _FORM_SCHEMA}}}},
)  # fmt: skip
async def upload_model(request: Request, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> JSONResponse:
    """Store a trained network: its ONNX file in part ``file``, optionally a ``name``. 201 with the
    model (input shape, parameters, prunable layers, dense latency on the server's targets); 200
    with the one stored before when the owner sends the same file; 422 naming the failed check
    (not ONNX, external data, an operator outside the supported set, the checker, opset, the
    comparison with onnxruntime); 413 past ``NAS_LIMIT_MODEL_BYTES`` or the owner's quota
    (``NAS_LIMIT_OWNER_DATASET_BYTES``, datasets and models together). A job searches it as
    ``search_space: {name: model_sparsity, params: {model_id}}``."""
    model_pool(request).check_admission(principal.owner)  # an owner at the limit sends no body in vain
    uploads = upload_dir(settings)
    await run_in_threadpool(uploads.mkdir, 0o700, True, True)
    target = uploads / f"{uuid.uuid4().hex}{UPLOAD_SUFFIX}"
    try:
        form = await _receive(request, target, settings.limit_model_bytes)
        return await _keep(request, store, settings, principal, form)
    finally:
        target.unlink(missing_ok=True)


async def _keep(request: Request, store: Store, settings: Settings, principal: Principal, form: _Form) -> JSONResponse:
    from nas.models.onnx_import import ModelLimits

    if form.filename is None:
        raise _invalid("file", "no model: send the ONNX file in part 'file'")
    name = _name(form.fields, form.filename)
    existing = store.find_model(principal.owner, form.sha256)
    if existing is not None:
        return JSONResponse(existing.model_dump(mode="json"), status.HTTP_200_OK)
    limit = settings.limit_owner_dataset_bytes
    stored = store.owner_dataset_bytes(principal.owner)
    if stored + form.size > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"{principal.owner}'s datasets and models take {stored} bytes; this model ({form.size} "
                            f"bytes) would pass this server's limit of {limit} (NAS_LIMIT_OWNER_DATASET_BYTES)")  # fmt: skip
    model_id = uuid.uuid4().hex
    path = model_file(settings.artifact_dir, model_id)
    try:
        computed = await model_pool(request).run(
            principal.owner, read_in_worker, str(form.target),
            dataclasses.asdict(ModelLimits.from_settings(settings)),
            limit=TimeLimit(settings.ingest_timeout_s, "NAS_INGEST_TIMEOUT_S"),
        )  # fmt: skip
        record = ModelRecord(
            id=model_id, name=name, owner=principal.owner, size_bytes=form.size, sha256=form.sha256,
            created_at=utcnow(), **computed,
        )  # fmt: skip
        await run_in_threadpool(_keep_file, form.target, path)
        kept, created = await run_in_threadpool(store.create_model, record, limit)
    except WorkerKilled as exc:
        why = exc.detail if exc.timed_out else "the process reading it died (out of memory?)"
        raise _invalid("file", f"the model could not be read: {why}") from None
    except QuotaExceeded as exc:
        await run_in_threadpool(shutil.rmtree, path.parent, True)
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from None
    except BaseException:
        await run_in_threadpool(shutil.rmtree, path.parent, True)
        raise
    if kept.id != model_id:  # the same file arrived meanwhile
        await run_in_threadpool(shutil.rmtree, path.parent, True)
    log.info("stored model %s (%d bytes, %d parameters) for %s", kept.id, kept.size_bytes, kept.params, principal.owner)
    return JSONResponse(kept.model_dump(mode="json"), status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def _keep_file(upload: Path, path: Path) -> None:
    """Move the checked upload (mode 0600) to its place, in a 0700 folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.move(upload, path)


# -- reading and deleting -------------------------------------------------------------------------


@router.get("", response_model=ModelPage, responses=errors(422))
async def list_models(
    request: Request, store: StoreDep, principal: PrincipalDep, limit: Limit = 50, cursor: Cursor = None
) -> ModelPage:
    models, next_seq = store.list_models(principal, limit, decode_cursor(request, cursor, "models"))
    return ModelPage(items=models, next_cursor=encode_cursor(request, next_seq, "models"))


@router.get("/{model_id}", response_model=ModelRecord, responses=errors(404))
async def get_model(model_id: str, store: StoreDep, principal: PrincipalDep) -> ModelRecord:
    return store.get_model(model_id, principal)


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
async def delete_model(model_id: str, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> None:
    """Delete a model and its file; 409 while a queued or running job searches it."""
    record = await run_in_threadpool(store.delete_model, model_id, principal)
    await run_in_threadpool(shutil.rmtree, model_file(settings.artifact_dir, record.id).parent, True)

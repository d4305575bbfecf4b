"""Datasets: upload one (or register one by path), list, read, delete, and an image set's sample grid.

An upload streams to a temporary file under ``NAS_HOME/uploads``, hashed on the way and refused
with 413 the moment it passes ``NAS_LIMIT_UPLOAD_BYTES``; it is never whole in memory. Reading it
feeds user bytes to decoders (numpy, pyarrow, Pillow, archives), so that runs in a worker process
of :mod:`api.workpool` (a pool of its own), killed past ``NAS_INGEST_TIMEOUT_S``: a crash or a bomb
ends that process, never the API. What is kept is the canonical file of the splits (``data.npz``) and, for image
sets, a grid of samples; the upload itself is removed, and any refusal leaves no file and no row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse, JSONResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from api.responses import errors
from api.workpool import TimeLimit, WorkError, WorkerKilled, ingest_pool
from nas.errors import NotFound, QuotaExceeded
from nas.safe_text import check_printable
from nas.settings import Settings
from nas.specs import DatasetOptions, DatasetRecord, Page
from nas.store import Principal, Store
from nas.store.artifacts import dataset_folder, datasets_dir
from nas.store.tables import utcnow

router = APIRouter(prefix="/datasets", tags=["datasets"])
log = logging.getLogger(__name__)

UPLOAD_SUFFIX = ".upload"
FIELDS = ("name", "label_column", "image_size", "color", "test_fraction", "split_seed", "path")
MAX_FIELD_BYTES = 4096  # of one form field's value
MAX_PARTS = 16  # the file and every field, with room for none to repeat
MAX_NAME = 200
FLUSH_BYTES = 1 << 20  # the file is written (and hashed) off the event loop a mebibyte at a time
# What a multipart body may carry besides the file: boundaries, part headers, the fields.
FORM_OVERHEAD_BYTES = MAX_PARTS * (MAX_FIELD_BYTES + 1024)

_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "the dataset: .npz, .csv, .parquet, or a .zip/.tar/.tar.gz of one folder of images per class"},
        "path": {"type": "string", "description": "instead of a file: a path or file:// URI under the server's NAS_DATA_ROOTS"},
        "name": {"type": "string", "maxLength": MAX_NAME, "description": "defaults to the file's name without extension"},
        "label_column": {"type": "string", "description": "CSV and Parquet: the column of class labels (required there)"},
        "image_size": {"type": "integer", "description": "image archives: the side every image is resized to (default 32)"},
        "color": {"type": "string", "enum": ["grayscale", "rgb"], "description": "image archives (default rgb)"},
        "test_fraction": {"type": "number", "description": "held out when the file has no test split (default 0.2)"},
        "split_seed": {"type": "integer", "minimum": 0, "description": "seed of that stratified split (default 0)"},
    },
}  # fmt: skip


class DatasetPage(Page):
    items: list[DatasetRecord]


def upload_dir(settings: Settings) -> Path:
    """Where uploads stream to while they arrive; nothing stays there past its request."""
    return settings.home / "uploads"


def remove_strays(store: Store, settings: Settings) -> None:
    """Remove what a killed server left: uploads that were arriving, and dataset folders that no row
    names (reading stopped midway). Run at start, before any API process takes a request."""
    shutil.rmtree(upload_dir(settings), ignore_errors=True)
    folders = datasets_dir(settings.artifact_dir)
    if not folders.is_dir():
        return
    for folder in folders.iterdir():
        try:
            store.get_dataset(folder.name)
        except NotFound:
            log.info("removing %s: no stored dataset has it", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _rejected(field_name: str | None, message: str) -> list[dict[str, Any]]:
    """A 422's detail: the field (``None``: the body as a whole) and what is wrong with it."""
    loc = ["body"] if field_name is None else ["body", field_name]
    return [{"loc": loc, "msg": message, "type": "dataset_rejected"}]


def _invalid(field_name: str | None, message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, _rejected(field_name, message))


def too_large(limit: int) -> str:
    """What an upload past ``limit`` bytes is answered (413)."""
    return f"the upload is larger than this server's limit of {limit} bytes (NAS_LIMIT_UPLOAD_BYTES)"


# -- receiving the form --------------------------------------------------------------------------


@dataclass
class _Form:
    """A multipart body as it arrived: its fields, and its file written to ``target``."""

    target: Path
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # None: no file part
    size: int = 0
    sha256: str = ""


class _FormReader:
    """Feeds a multipart body through python-multipart's streaming parser, writing the file part to
    disk (0600) and hashing it in chunks; ``fields`` (the form's others) are kept, each at most
    ``MAX_FIELD_BYTES``. Stored models arrive through it too (:mod:`api.routes.models`)."""

    def __init__(
        self, boundary: bytes, target: Path, max_file_bytes: int, fields: tuple[str, ...] = FIELDS,
        refusal: Callable[[int], str] = too_large,
    ) -> None:
        self.form = _Form(target)
        self.fields = fields
        self.refusal = refusal  # the 413's words, naming the limit's setting
        self.max_file_bytes = max_file_bytes
        self.events: list[tuple[str, bytes]] = []
        self.done = False
        self._header = [b"", b""]
        self._disposition = b""
        self._part: str | None = None  # the field being read, "" for the file
        self._value = bytearray()
        self._pending = bytearray()
        self._parts = 0
        self._hash = hashlib.sha256()
        self._handle: Any = None
        self.parser = MultipartParser(boundary, {
            "on_header_field": lambda data, start, end: self._add_header(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._add_header(1, data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.events.append(("part", self._disposition)),
            "on_part_data": lambda data, start, end: self.events.append(("data", bytes(data[start:end]))),
            "on_part_end": lambda: self.events.append(("end", b"")),
            "on_end": lambda: self.events.append(("done", b"")),
        })  # fmt: skip

    def _add_header(self, which: int, data: bytes) -> None:
        self._header[which] += data

    def _header_end(self) -> None:
        name, value = self._header
        if name.strip().lower() == b"content-disposition":
            self._disposition = value.strip()
        self._header = [b"", b""]

    async def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise _invalid(None, f"the body is not valid multipart/form-data: {exc}") from None
        for kind, data in self.events:
            self._event(kind, data)
        self.events.clear()
        if len(self._pending) >= FLUSH_BYTES:
            await run_in_threadpool(self._flush)

    async def finish(self) -> _Form:
        try:
            self.parser.finalize()
        except FormParserError as exc:
            raise _invalid(None, f"the body is not valid multipart/form-data: {exc}") from None
        for kind, data in self.events:
            self._event(kind, data)
        if not self.done:
            raise _invalid(None, "the multipart body ended before its closing boundary")
        await run_in_threadpool(self._flush)
        if self.form.filename is not None:
            self.form.sha256 = self._hash.hexdigest()
        return self.form

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def _event(self, kind: str, data: bytes) -> None:
        if kind == "part":
            self._begin(data)
        elif kind == "data":
            if self._part == "":
                self.form.size += len(data)
                if self.form.size > self.max_file_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self.refusal(self.max_file_bytes))
                self._pending += data
            else:
                self._value += data
                if len(self._value) > MAX_FIELD_BYTES:
                    raise _invalid(self._part, f"the form field {self._part} is longer than {MAX_FIELD_BYTES} bytes")
        elif kind == "end":
            if self._part:
                try:
                    self.form.fields[self._part] = self._value.decode("utf-8")
                except UnicodeDecodeError:
                    raise _invalid(self._part, f"the form field {self._part} is not UTF-8 text") from None
            self._part, self._disposition = None, b""
        else:
            self.done = True

    def _begin(self, disposition: bytes) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise _invalid(None, f"more than {MAX_PARTS} parts in the form")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "file":
            if self.form.filename is not None:
                raise _invalid("file", "the form has more than one file part; upload one file at a time")
            filename = options.get(b"filename", b"").decode("utf-8", "replace")
            # The client's name says the format and the default name; it is never a path here.
            self.form.filename = PureWindowsPath(PurePosixPath(filename).name).name
            fd = os.open(self.form.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._handle = os.fdopen(fd, "wb")
            self._part = ""
        elif name in self.fields:
            if name in self.form.fields:
                raise _invalid(name, f"the form field {name} is given twice")
            self._part, self._value = name, bytearray()
        else:
            shown = _quoted(name)
            raise _invalid(name or None, f"unknown form field {shown}; the fields are file, {', '.join(self.fields)}")

    def _flush(self) -> None:
        if self._pending:
            self._hash.update(self._pending)
            self._handle.write(self._pending)
            self._pending = bytearray()


def _quoted(text: str) -> str:
    """``text`` quoted for a message: as it is when printable, else as Python writes it."""
    try:
        return repr(check_printable(text))
    except ValueError:
        return ascii(text)


async def _receive(request: Request, target: Path, max_file_bytes: int) -> _Form:
    kind, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise _invalid(None, "send the dataset as multipart/form-data: the file in part 'file' (or a 'path' field), "
                             "its options as fields")  # fmt: skip
    try:
        reader = _FormReader(boundary, target, max_file_bytes)
    except FormParserError as exc:
        raise _invalid(None, f"the body is not valid multipart/form-data: {exc}") from None
    try:
        async for chunk in request.stream():
            await reader.feed(chunk)
        return await reader.finish()
    finally:
        reader.close()


# -- reading and keeping the dataset --------------------------------------------------------------


def _options(fields: dict[str, str], fmt: str) -> Any:
    """The ingest options the form gives; 422 naming a field that is not a number where one is due."""
    from nas.data.ingest import IngestOptions

    given: dict[str, Any] = {}
    for name, kind in (("image_size", int), ("test_fraction", float), ("split_seed", int)):
        if name in fields:
            try:
                given[name] = kind(fields[name])
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise _invalid(name, f"{name} must be {what}, not {fields[name][:100]!r}") from None
    for name in ("label_column", "color"):
        if name in fields:
            given[name] = fields[name]
    return IngestOptions(format=fmt, **given)


def _name(fields: dict[str, str], filename: str) -> str:
    name = fields.get("name") or Path(filename).name.split(".")[0] or "dataset"
    if len(name) > MAX_NAME:
        raise _invalid("name", f"the name is {len(name)} characters long; at most {MAX_NAME} are allowed")
    try:
        return check_printable(name)
    except ValueError as exc:
        raise _invalid("name", str(exc)) from None


def options_key(options: Any, by_path: bool) -> str:
    """The digest that tells one keeping of a file from another: every ingest option, format included,
    and whether it is kept (uploaded) or read where it lies (by path, which may change)."""
    key = {**dataclasses.asdict(options), "source": "path" if by_path else "upload"}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def ingest_in_worker(
    source: str, options: dict[str, Any], limits: dict[str, Any], folder: str, by_path: bool
) -> dict[str, Any] | WorkError:
    """Read ``source`` and keep it in ``folder``, in a worker process: the record's computed fields, or
    the HTTP error. A dataset registered by path is hashed here and keeps no arrays on this machine
    (workers read it where it lies)."""
    from nas.data.ingest import DatasetRejected, IngestLimits, IngestOptions, ingest, store
    from nas.data.ingest.folder import DATA_FILE

    target = Path(folder)
    try:
        extra: dict[str, Any] = {}
        if by_path:
            digest = hashlib.sha256()
            with open(source, "rb") as handle:
                while chunk := handle.read(FLUSH_BYTES):
                    digest.update(chunk)
            extra = {"sha256": digest.hexdigest(), "size_bytes": os.path.getsize(source)}
        ingested = ingest(Path(source), IngestOptions(**options), IngestLimits(**limits))
        fields = store(ingested, target)
        if by_path:
            (target / DATA_FILE).unlink(missing_ok=True)
        stored = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
        return {**fields, **extra, "stored_bytes": stored, "test_given": ingested.test_given}
    except DatasetRejected as exc:
        field_name = "path" if by_path and exc.field == "file" else exc.field
        return WorkError(422, _rejected(field_name, exc.message))
    except Exception as exc:  # a decoder's own error on a malformed file is still the file's problem
        log.warning("reading an uploaded dataset failed", exc_info=True)
        why = str(exc).replace(source, "the file")  # an upload's temporary path is the server's business
        return WorkError(422, _rejected("path" if by_path else "file", f"the file could not be read: {why}"[:1000]))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRecord,
    responses={
        **errors(413, 422),
        200: {"model": DatasetRecord, "description": "this owner stored the same file with the same options before: that dataset"},
        503: {"description": "the server is busy reading other uploads (Retry-After)"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _FORM_SCHEMA}}}},
)  # fmt: skip
async def upload_dataset(request: Request, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> JSONResponse:
    """Store a dataset: the file in part ``file`` (``.npz``, ``.csv``, ``.parquet``, or a ``.zip``/
    ``.tar``/``.tar.gz`` of images in one folder per class), or ``path``, a file under the server's
    ``NAS_DATA_ROOTS``; its options as form fields. 201 with the dataset; 200 with the one stored
    before when the owner sends the same file with the same options; 422 naming what is wrong
    with the file or a field; 413 past ``NAS_LIMIT_UPLOAD_BYTES`` or the owner's quota
    (``NAS_LIMIT_OWNER_DATASET_BYTES``); 429 while ``NAS_LIMIT_EXPENSIVE_REQUESTS`` of the owner's
    uploads are being read. A job uses it as ``dataset: {name: upload, params: {id}}``."""
    ingest_pool(request).check_admission(principal.owner)  # an owner at the limit sends no body in vain
    uploads = upload_dir(settings)
    await run_in_threadpool(uploads.mkdir, 0o700, True, True)
    target = uploads / f"{uuid.uuid4().hex}{UPLOAD_SUFFIX}"
    try:
        form = await _receive(request, target, settings.limit_upload_bytes)
        return await _keep(request, store, settings, principal, form)
    finally:
        target.unlink(missing_ok=True)


async def _keep(request: Request, store: Store, settings: Settings, principal: Principal, form: _Form) -> JSONResponse:
    from nas.data.ingest import DatasetRejected, IngestLimits, detect_format
    from nas.data.roots import resolve_under_roots

    by_path = "path" in form.fields
    if by_path == (form.filename is not None):
        raise _invalid("file", "give the dataset either as a file (part 'file') or as a 'path', not both" if by_path
                       else "no dataset: send the file in part 'file', or a 'path' under the server's data roots")  # fmt: skip
    try:
        if by_path:
            source = await run_in_threadpool(resolve_under_roots, form.fields["path"], settings.data_roots)
            filename = source.name
        else:
            source, filename = form.target, form.filename or ""
        fmt = detect_format(filename)
        options = _options(form.fields, fmt)
    except DatasetRejected as exc:
        raise _invalid("path" if by_path and exc.field == "file" else exc.field, exc.message) from None
    name, key = _name(form.fields, filename), options_key(options, by_path)
    if not by_path:
        existing = store.find_dataset(principal.owner, form.sha256, key)
        if existing is not None:
            return JSONResponse(existing.model_dump(mode="json"), status.HTTP_200_OK)
    limit = settings.limit_owner_dataset_bytes
    if store.owner_dataset_bytes(principal.owner) >= limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"{principal.owner}'s datasets and models already take this server's limit of {limit} bytes "
                            f"(NAS_LIMIT_OWNER_DATASET_BYTES); delete some first")  # fmt: skip
    dataset_id = uuid.uuid4().hex
    folder = dataset_folder(settings.artifact_dir, dataset_id)
    try:
        computed = await ingest_pool(request).run(
            principal.owner, ingest_in_worker, str(source),
            dataclasses.asdict(options),
            dataclasses.asdict(IngestLimits.from_settings(settings)), str(folder), by_path,
            limit=TimeLimit(settings.ingest_timeout_s, "NAS_INGEST_TIMEOUT_S"),
        )  # fmt: skip
        record = DatasetRecord(
            id=dataset_id, name=name, owner=principal.owner, format=fmt, source="path" if by_path else "upload",
            path=str(source) if by_path else None, input_shape=list(computed["input_shape"]),
            num_classes=computed["num_classes"], class_names=computed["class_names"],
            class_counts=computed["class_counts"], n_train=computed["n_train"], n_test=computed["n_test"],
            size_bytes=computed.get("size_bytes", form.size), stored_bytes=computed["stored_bytes"],
            sha256=computed.get("sha256", form.sha256),
            options=DatasetOptions.model_validate({k: v for k, v in dataclasses.asdict(options).items() if k != "format"}),
            test_given=computed["test_given"], summary=computed["summary"], created_at=utcnow(),
        )  # fmt: skip
        kept, created = await run_in_threadpool(store.create_dataset, record, key, limit)
    except WorkerKilled as exc:
        await run_in_threadpool(shutil.rmtree, folder, True)
        why = exc.detail if exc.timed_out else "the process reading it died (out of memory?)"
        raise _invalid("path" if by_path else "file", f"the file could not be read: {why}") from None
    except QuotaExceeded as exc:
        await run_in_threadpool(shutil.rmtree, folder, True)
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from None
    except BaseException:
        await run_in_threadpool(shutil.rmtree, folder, True)
        raise
    if kept.id != dataset_id:  # the same file and options arrived meanwhile, or by another path
        await run_in_threadpool(shutil.rmtree, folder, True)
    log.info("stored dataset %s (%s, %d bytes) for %s", kept.id, fmt, kept.size_bytes, principal.owner)
    return JSONResponse(kept.model_dump(mode="json"), status.HTTP_201_CREATED if created else status.HTTP_200_OK)


# -- reading and deleting -------------------------------------------------------------------------


@router.get("", response_model=DatasetPage, responses=errors(422))
async def list_datasets(
    request: Request, store: StoreDep, principal: PrincipalDep, limit: Limit = 50, cursor: Cursor = None
) -> DatasetPage:
    datasets, next_seq = store.list_datasets(principal, limit, decode_cursor(request, cursor, "datasets"))
    return DatasetPage(items=datasets, next_cursor=encode_cursor(request, next_seq, "datasets"))


@router.get("/{dataset_id}", response_model=DatasetRecord, responses=errors(404))
async def get_dataset(dataset_id: str, store: StoreDep, principal: PrincipalDep) -> DatasetRecord:
    return store.get_dataset(dataset_id, principal)


@router.get(
    "/{dataset_id}/samples.png",
    response_class=FileResponse,
    responses={**errors(404), 200: {"content": {"image/png": {}}, "description": "up to 8 images of each class, a row per class"}},
)  # fmt: skip
async def dataset_samples(dataset_id: str, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> FileResponse:
    record = store.get_dataset(dataset_id, principal)
    from nas.data.ingest.folder import SAMPLES_FILE

    path = dataset_folder(settings.artifact_dir, record.id) / SAMPLES_FILE
    if not path.is_file():
        raise NotFound(f"dataset {dataset_id} has no sample images: only image archives have them")
    return FileResponse(path, media_type="image/png")


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
async def delete_dataset(dataset_id: str, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> None:
    """Delete a dataset and its files; 409 while a queued or running job uses it."""
    record = await run_in_threadpool(store.delete_dataset, dataset_id, principal)
    await run_in_threadpool(shutil.rmtree, dataset_folder(settings.artifact_dir, record.id), True)

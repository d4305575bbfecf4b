"""Users' datasets over HTTP against a live server (uvicorn on a localhost socket, uploads read in
the app's real worker processes): each bad
upload answers a 4xx naming the problem and leaves no file and no row; identical uploads are stored
once; quotas and the upload limit hold; another owner meets 404 on every route and cannot use the
dataset in a job; a dataset a queued job uses cannot be deleted. The store's dataset methods run on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import socket
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import HTTPException
from PIL import Image
from sqlalchemy import func, select

from api.app import API_PREFIX
from api.routes.datasets import FORM_OVERHEAD_BYTES, remove_strays, upload_dir
from api.workpool import TimeLimit, WorkerKilled, reader_pool
from nas.errors import IllegalTransition, NotFound, QuotaExceeded
from nas.settings import Settings
from nas.data.stored import UnknownDataset, scoped_catalog
from nas.specs import DatasetOptions, DatasetRecord
from nas.store import Principal, Store
from nas.store.artifacts import dataset_folder, datasets_dir
from nas.store.dataset_catalog import StoreDatasetCatalog
from nas.store.tables import DatasetRow
from tests.sdk_server import serve

URL = f"{API_PREFIX}/datasets"
UPLOAD_LIMIT = 256 * 1024
QUOTA = 2 << 20


# -- files made here -------------------------------------------------------------------------------


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def blobs(n: int = 40, features: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Two separable classes of ``features``-long rows."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return {"x": (rng.normal(size=(n, features)) + y[:, None] * 3).astype(np.float32), "y": y}


def png(side: int = 8, value: int = 0, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side), value).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def image_folder(per_class: int = 5) -> dict[str, bytes]:
    return {f"{label}/{i}.png": png(8, 40 * i + (120 if label == "b" else 0)) for label in "ab" for i in range(per_class)}


def tar_with_symlink() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in image_folder().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    return buffer.getvalue()


def csv(rows: int = 40, label: str = "label") -> bytes:
    lines = [f"a,b,{label}"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 2 else 'no'}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def form(**fields: str) -> dict[str, tuple[None, str]]:
    """Fields as parts of a multipart body without a file (httpx would send them urlencoded)."""
    return {name: (None, value) for name, value in fields.items()}


# -- the live app ------------------------------------------------------------------------------------


@dataclass
class Live:
    client: httpx.Client
    store: Store
    settings: Settings
    keys: dict[str, str]
    roots: Path

    def headers(self, owner: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[owner]}"}

    def upload(self, owner: str, filename: str, data: bytes, **fields: Any) -> Any:
        return self.client.post(URL, files={"file": (filename, data)}, data=fields, headers=self.headers(owner))

    def register(self, owner: str, path: str, **fields: Any) -> Any:
        return self.client.post(URL, files=form(path=path, **fields), headers=self.headers(owner))

    def left(self) -> tuple[list[str], list[str], int]:
        """What the server keeps: files under uploads/, dataset folders, dataset rows."""
        uploads = upload_dir(self.settings)
        folders = datasets_dir(self.settings.artifact_dir)
        with self.store.engine.connect() as connection:
            rows = connection.scalar(select(func.count()).select_from(DatasetRow))
        return (
            sorted(p.name for p in uploads.iterdir()) if uploads.exists() else [],
            sorted(p.name for p in folders.iterdir()) if folders.exists() else [],
            rows,
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp("datasets-api")
    roots, home = base / "roots", base / "home"
    (roots / "sets").mkdir(parents=True)
    home.mkdir()
    server = serve(
        home, data_roots=(roots,), limit_upload_bytes=UPLOAD_LIMIT, limit_owner_dataset_bytes=QUOTA,
        limit_dataset_expanded_bytes=4 << 20, limit_image_pixels=1 << 14, auth_failures_per_minute=10**6,
    )  # fmt: skip
    running = next(server)
    keys = {owner: running.store.create_api_key(owner) for owner in ("alice", "bob", "carol", "dave")}
    keys["root"] = running.store.create_api_key("root", is_admin=True)
    with httpx.Client(base_url=running.url, timeout=120) as client:
        yield Live(client, running.store, running.settings, keys, roots)
    server.close()


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def refusal(response: Any) -> tuple[list[Any], str]:
    """``(loc, msg)`` of a 422's one error."""
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return error["loc"], error["msg"]


# -- uploads that work ---------------------------------------------------------------------------------


def test_an_upload_is_read_once_and_served(live: Live) -> None:
    arrays = blobs()
    dataset = created(live.upload("alice", "blobs.npz", npz(**arrays), name="my blobs", split_seed="3"))
    assert dataset["name"] == "my blobs" and dataset["owner"] == "alice" and dataset["format"] == "npz"
    assert dataset["source"] == "upload" and dataset["path"] is None
    assert dataset["input_shape"] == [6] and dataset["num_classes"] == 2 and dataset["class_names"] == ["0", "1"]
    assert dataset["n_train"] + dataset["n_test"] == 40 and sum(dataset["class_counts"]["test"]) == dataset["n_test"]
    assert dataset["options"]["split_seed"] == 3 and not dataset["test_given"]
    assert len(dataset["sha256"]) == 64 and dataset["size_bytes"] == len(npz(**arrays))
    folder = dataset_folder(live.settings.artifact_dir, dataset["id"])
    assert sorted(p.name for p in folder.iterdir()) == ["data.npz"]
    assert dataset["stored_bytes"] == (folder / "data.npz").stat().st_size
    assert live.left()[0] == []  # the upload itself is not kept

    got = live.client.get(f"{URL}/{dataset['id']}", headers=live.headers("alice"))
    assert got.status_code == 200 and got.json() == dataset
    listed = live.client.get(URL, headers=live.headers("alice")).json()
    assert dataset["id"] in [d["id"] for d in listed["items"]]
    samples = live.client.get(f"{URL}/{dataset['id']}/samples.png", headers=live.headers("alice"))
    assert samples.status_code == 404 and "no sample images" in samples.json()["detail"]


def test_an_image_archive_has_a_sample_grid(live: Live) -> None:
    dataset = created(live.upload("alice", "letters.zip", zip_of(image_folder()), image_size="8", color="grayscale"))
    assert dataset["format"] == "images" and dataset["input_shape"] == [1, 8, 8] and dataset["class_names"] == ["a", "b"]
    samples = live.client.get(f"{URL}/{dataset['id']}/samples.png", headers=live.headers("alice"))
    assert samples.status_code == 200 and samples.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(samples.content)).size[0] > 8


def test_the_same_file_with_the_same_options_is_stored_once(live: Live) -> None:
    data = npz(**blobs(seed=1))
    first = created(live.upload("alice", "same.npz", data))
    before = live.left()
    again = live.upload("alice", "renamed.npz", data, name="another name")
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert live.left() == before
    other_split = created(live.upload("alice", "same.npz", data, split_seed="1"))
    assert other_split["id"] != first["id"]
    # another owner's identical file is theirs alone
    assert created(live.upload("carol", "same.npz", data))["id"] != first["id"]


def test_paging_the_list(live: Live) -> None:
    for seed in (20, 21, 22):
        created(live.upload("dave", "page.npz", npz(**blobs(seed=seed))))
    first = live.client.get(URL, params={"limit": 2}, headers=live.headers("dave")).json()
    rest = live.client.get(URL, params={"limit": 2, "cursor": first["next_cursor"]}, headers=live.headers("dave")).json()
    assert len(first["items"]) == 2 and len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert live.client.get(URL, params={"cursor": "made-up"}, headers=live.headers("dave")).status_code == 422


# -- bad input: a 4xx naming the problem, nothing left -------------------------------------------------


def _pickled() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    return buffer.getvalue()


def _bomb_zip() -> bytes:
    return zip_of({**image_folder(), "a/zeros.png": bytes(5 << 20)})


BAD_UPLOADS = {
    "pickled npz": ("bad.npz", _pickled(), {}, "file", "pickle"),
    "lengths differ": ("bad.npz", npz(x=np.zeros((10, 3), np.float32), y=np.arange(9) % 2), {}, "file", "9 labels"),
    "NaN features": ("bad.npz", npz(x=np.full((10, 3), np.nan, np.float32), y=np.arange(10) % 2), {}, "file", "NaN"),
    "infinite features": ("bad.npz", npz(x=np.full((10, 3), np.inf, np.float32), y=np.arange(10) % 2), {}, "file", "infinite"),
    "one class": ("bad.npz", npz(x=np.ones((10, 3), np.float32), y=np.zeros(10, np.int64)), {}, "file", "one class"),
    "float labels": ("bad.npz", npz(x=np.ones((10, 3), np.float32), y=np.linspace(0, 1, 10)), {}, "file", "integers or class names"),
    "empty file": ("bad.npz", b"", {}, "file", "empty"),
    "empty archive": ("bad.zip", zip_of({}), {}, "file", "no images"),
    "corrupt archive": ("bad.zip", b"PK\x03\x04 this is no zip", {}, "file", "not a readable"),
    "image that won't decode": ("bad.zip", zip_of({**image_folder(), "a/broken.png": b"\x89PNG\r\n\x1a\n junk"}), {}, "file", "won't decode"),
    "entry climbing out": ("bad.zip", zip_of({**image_folder(), "../evil.png": png()}), {}, "file", "climbs out"),
    "absolute entry": ("bad.zip", zip_of({**image_folder(), "/etc/evil.png": png()}), {}, "file", "absolute path"),
    "symlink entry": ("bad.tar", tar_with_symlink(), {}, "file", "link"),
    "archive bomb": ("bad.zip", _bomb_zip(), {}, "file", "NAS_LIMIT_DATASET_EXPANDED_BYTES"),
    "image bomb": ("bad.zip", zip_of({**image_folder(), "a/huge.png": png(1000)}), {}, "file", "NAS_LIMIT_IMAGE_PIXELS"),
    "CSV without its label column": ("bad.csv", csv(label="target"), {"label_column": "label"}, "label_column", "'target'"),
    "CSV without label_column": ("bad.csv", csv(), {}, "label_column", "label_column"),
    "unknown format": ("bad.pkl", b"\x80\x04K\x01.", {}, "file", "format"),
    "image_size not a number": ("ok.zip", zip_of(image_folder()), {"image_size": "big"}, "image_size", "integer"),
    "image_size out of range": ("ok.zip", zip_of(image_folder()), {"image_size": "100000"}, "image_size", "image_size"),
    "unknown color": ("ok.zip", zip_of(image_folder()), {"color": "sepia"}, "color", "sepia"),
    "control characters in the name": ("ok.npz", npz(**blobs()), {"name": "a\x1b[31m"}, "name", "control"),
    "unknown form field": ("ok.npz", npz(**blobs()), {"format": "npz"}, "format", "unknown form field"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_is_refused_naming_the_problem_and_leaves_nothing(live: Live, case: str) -> None:
    filename, data, fields, field, words = BAD_UPLOADS[case]
    before = live.left()
    loc, message = refusal(live.upload("bob", filename, data, **fields))
    assert loc == ["body", field] and words in message, message
    assert live.left() == before


def test_an_upload_over_the_limit_is_413_as_it_arrives(live: Live) -> None:
    before = live.left()
    big = npz(x=np.zeros((UPLOAD_LIMIT // 4 // 8 + 1, 8), np.float32), y=np.arange(UPLOAD_LIMIT // 4 // 8 + 1) % 2)
    declared = live.upload("bob", "big.npz", big)
    assert declared.status_code == 413 and "NAS_LIMIT_UPLOAD_BYTES" in declared.json()["detail"]
    # sent chunked, with no length declared: refused once the bytes pass the limit
    boundary = "b0und4ry"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip

    def body() -> Iterator[bytes]:
        yield head
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]
        yield f"\r\n--{boundary}--\r\n".encode()

    chunked = live.client.post(URL, content=body(), headers={
        **live.headers("bob"), "Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert chunked.status_code == 413 and "NAS_LIMIT_UPLOAD_BYTES" in chunked.json()["detail"]
    # a declared length past the limit and the form's allowance is refused before a byte is read
    # (over a raw socket: an HTTP client will not declare more than it sends)
    url = httpx.URL(str(live.client.base_url))
    declared_only = (f"POST {URL} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {live.keys['bob']}\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                     f"Content-Length: {UPLOAD_LIMIT + FORM_OVERHEAD_BYTES + 1}\r\n\r\n")  # fmt: skip
    with socket.create_connection((url.host, url.port), timeout=30) as connection:
        connection.sendall(declared_only.encode())
        status_line = connection.makefile("rb").readline()
    assert status_line.split()[1] == b"413", status_line
    assert live.left() == before


@pytest.mark.parametrize(
    ("headers", "body", "words"),
    [
        ({"Content-Type": "application/json"}, b"{}", "multipart/form-data"),
        ({"Content-Type": "multipart/form-data; boundary=xyz"}, b"--xyz\r\nnonsense", "multipart"),
    ],
)
def test_a_body_that_is_not_a_form_is_refused(live: Live, headers: dict[str, str], body: bytes, words: str) -> None:
    before = live.left()
    loc, message = refusal(live.client.post(URL, content=body, headers={**live.headers("bob"), **headers}))
    assert loc == ["body"] and words in message
    assert live.left() == before


def test_file_and_path_together_or_neither_are_refused(live: Live) -> None:
    loc, message = refusal(live.client.post(URL, data={"path": "/x.npz"}, files={"file": ("x.npz", b"1")},
                                            headers=live.headers("bob")))  # fmt: skip
    assert loc == ["body", "file"] and "not both" in message
    loc, message = refusal(live.client.post(URL, files=form(name="x"), headers=live.headers("bob")))
    assert loc == ["body", "file"] and "no dataset" in message


# -- datasets registered by path --------------------------------------------------------------------


def test_a_file_under_the_data_roots_is_registered_where_it_lies(live: Live) -> None:
    source = live.roots / "sets" / "rows.csv"
    source.write_bytes(csv())
    dataset = created(live.register("alice", str(source), label_column="label"))
    assert dataset["source"] == "path" and dataset["path"] == str(source.resolve()) and dataset["format"] == "csv"
    assert dataset["input_shape"] == [2] and dataset["size_bytes"] == source.stat().st_size
    # the workers read it where it lies: the server keeps no copy of its arrays
    folder = dataset_folder(live.settings.artifact_dir, dataset["id"])
    assert not (folder / "data.npz").exists() and dataset["stored_bytes"] == 0
    # the same file by URI, with the same options, is the same dataset
    again = live.register("alice", source.resolve().as_uri(), label_column="label")
    assert again.status_code == 200 and again.json()["id"] == dataset["id"]


def test_paths_outside_the_data_roots_are_refused(live: Live, tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_bytes(csv())
    (live.roots / "sets" / "escape.csv").symlink_to(outside)
    cases = {
        str(outside): "not under",
        f"{live.roots}/sets/../../{tmp_path.name}/secret.csv": "'..'",
        str(live.roots / "sets" / "escape.csv"): "not under",
        "sets/rows.csv": "relative",
        "https://example.com/rows.csv": "https",
        str(live.roots / "sets" / "missing.csv"): "no file",
    }
    before = live.left()
    for path, words in cases.items():
        loc, message = refusal(live.register("bob", path, label_column="label"))
        assert loc == ["body", "path"] and words in message, (path, message)
    assert live.left() == before


# -- quotas ------------------------------------------------------------------------------------------


def _record(owner: str, stored_bytes: int, sha: str) -> DatasetRecord:
    return DatasetRecord(
        id=sha[:32], name="filler", owner=owner, format="npz", source="upload", input_shape=[3], num_classes=2,
        class_names=["0", "1"], class_counts={"train": [4, 4], "test": [1, 1]}, n_train=8, n_test=2,
        size_bytes=stored_bytes, stored_bytes=stored_bytes, sha256=sha, options=DatasetOptions(), test_given=False,
        summary={}, created_at=datetime.now(timezone.utc),
    )  # fmt: skip


def test_the_owner_quota_is_413_naming_it_and_leaves_nothing(live: Live) -> None:
    live.store.create_dataset(_record("erin", QUOTA, "e" * 64), "k")  # erin is at her quota
    live.store.create_dataset(_record("frank", QUOTA - 100, "f" * 64), "k")  # frank just under it
    live.keys.update({owner: live.store.create_api_key(owner) for owner in ("erin", "frank")})
    before = live.left()
    full = live.upload("erin", "more.npz", npz(**blobs(seed=5)))
    assert full.status_code == 413 and "NAS_LIMIT_OWNER_DATASET_BYTES" in full.json()["detail"]
    # frank's upload is read, then found too large to keep
    over = live.upload("frank", "more.npz", npz(**blobs(seed=5)))
    assert over.status_code == 413 and "NAS_LIMIT_OWNER_DATASET_BYTES" in over.json()["detail"]
    assert live.left() == before


# -- tenants, jobs and deletion ---------------------------------------------------------------------


def _job(dataset_id: str, space: str = "sparse_mlp") -> dict[str, Any]:
    return {"search_space": {"name": space, "params": {}}, "dataset": {"name": "upload", "params": {"id": dataset_id}},
            "training": {"epochs": 1}, "budget": {"max_trials": 1}}  # fmt: skip


def dataset_routes(client: httpx.Client) -> list[tuple[str, str]]:
    """(method, path) of every operation on one dataset, read from the server's OpenAPI document."""
    return [
        (method.upper(), path)
        for path, operations in client.get(f"{API_PREFIX}/openapi.json").json()["paths"].items()
        if "{dataset_id}" in path
        for method in operations
    ]


def test_another_owner_meets_404_everywhere_and_cannot_use_it(live: Live) -> None:
    dataset = created(live.upload("alice", "private.npz", npz(**blobs(seed=7))))
    routes = dataset_routes(live.client)
    assert {(m, p.removeprefix(URL)) for m, p in routes} == {
        ("GET", "/{dataset_id}"), ("GET", "/{dataset_id}/samples.png"), ("DELETE", "/{dataset_id}")}
    before = live.left()
    for method, path in routes:
        response = live.client.request(method, path.replace("{dataset_id}", dataset["id"]), headers=live.headers("bob"))
        assert response.status_code == 404 and response.json()["detail"] == f"dataset {dataset['id']} not found"
    assert dataset["id"] not in live.client.get(URL, headers=live.headers("bob")).text
    # in a job, alice's id and an id never stored get the same answer
    never = "0" * 32
    answers = []
    for dataset_id in (dataset["id"], never):
        loc, message = refusal(live.client.post(f"{API_PREFIX}/jobs", json=_job(dataset_id), headers=live.headers("bob")))
        assert loc == ["body", "dataset", "params", "id"] and dataset_id in message
        answers.append(message.replace(dataset_id, "ID"))
    assert answers[0] == answers[1]
    predict = {"architecture": {"search_space": {"name": "sparse_mlp", "params": {}}, "arch": {},
                                "dataset": {"name": "upload", "params": {"id": dataset["id"]}}}}  # fmt: skip
    loc, message = refusal(live.client.post(f"{API_PREFIX}/latency/predict", json=predict, headers=live.headers("bob")))
    assert loc == ["body", "architecture", "dataset", "params", "id"] and dataset["id"] in message
    assert live.left() == before
    # alice (and an admin) still reach it
    for owner in ("alice", "root"):
        assert live.client.get(f"{URL}/{dataset['id']}", headers=live.headers(owner)).status_code == 200


def test_a_latency_prediction_takes_its_input_shape_from_a_stored_dataset(live: Live) -> None:
    """The prediction runs in a worker process, which knows no stored datasets: the API passes the shape."""
    live.store.create_dataset(_record("alice", 10, "7" * 64).model_copy(update={"input_shape": [1, 12, 12]}), "k")
    architecture = {"search_space": {"name": "sparse_mlp", "params": {}}, "arch": {"depth": 1, "width_0": 32, "activation": "relu"},
                    "dataset": {"name": "upload", "params": {"id": "7" * 32}}}  # fmt: skip
    response = live.client.post(f"{API_PREFIX}/latency/predict", json={"architecture": architecture}, headers=live.headers("alice"))
    assert response.status_code == 200, response.text
    assert response.json()["input_shape"] == [1, 12, 12]


def test_a_dataset_a_queued_job_uses_cannot_be_deleted(live: Live) -> None:
    dataset = created(live.upload("alice", "used.npz", npz(**blobs(seed=8))))
    job = live.client.post(f"{API_PREFIX}/jobs", json=_job(dataset["id"]), headers=live.headers("alice"))
    assert job.status_code == 201, job.text
    refused = live.client.delete(f"{URL}/{dataset['id']}", headers=live.headers("alice"))
    assert refused.status_code == 409 and job.json()["id"] in refused.json()["detail"]
    assert live.client.get(f"{URL}/{dataset['id']}", headers=live.headers("alice")).status_code == 200
    cancel = live.client.post(f"{API_PREFIX}/jobs/{job.json()['id']}/cancel", headers=live.headers("alice"))
    assert cancel.status_code == 202
    assert live.client.delete(f"{URL}/{dataset['id']}", headers=live.headers("alice")).status_code == 204
    assert live.client.get(f"{URL}/{dataset['id']}", headers=live.headers("alice")).status_code == 404
    assert not dataset_folder(live.settings.artifact_dir, dataset["id"]).exists()
    loc, _ = refusal(live.client.post(f"{API_PREFIX}/jobs", json=_job(dataset["id"]), headers=live.headers("alice")))
    assert loc == ["body", "dataset", "params", "id"]


def test_a_table_sent_to_a_convolutional_space_is_refused_saying_why(live: Live) -> None:
    dataset = created(live.upload("alice", "rows.csv", csv(), label_column="label"))
    assert dataset["source"] == "upload"  # not the same file registered by path: that one may change
    assert dataset["input_shape"] == [2]
    response = live.client.post(f"{API_PREFIX}/jobs", json=_job(dataset["id"], "sparse_cnn"), headers=live.headers("alice"))
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert [e["loc"][:2] for e in errors] == [["body", "dataset"]]
    assert "(channels, height, width)" in errors[0]["msg"] and "(2,)" in errors[0]["msg"], errors[0]["msg"]


def test_strays_of_a_killed_server_are_removed_at_start(live: Live, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    kept = created(live.upload("alice", "kept.npz", npz(**blobs(seed=9))))
    upload_dir(settings).mkdir(parents=True)
    (upload_dir(settings) / "half.upload").write_bytes(b"half")
    for dataset_id in (kept["id"], "a" * 32):
        dataset_folder(settings.artifact_dir, dataset_id).mkdir(parents=True)
    remove_strays(live.store, settings)
    assert not upload_dir(settings).exists()
    assert [p.name for p in datasets_dir(settings.artifact_dir).iterdir()] == [kept["id"]]


def test_a_read_past_its_time_limit_is_killed_naming_the_setting(tmp_path: Path) -> None:
    """The kernel ends the reading process, however long the call it is in; the owner's next upload
    was refused before its body while the read ran."""
    pool = reader_pool(Settings(home=tmp_path, limit_expensive_requests=1))

    async def read() -> None:
        running = asyncio.ensure_future(pool.run("alice", time.sleep, 600, limit=TimeLimit(1, "NAS_INGEST_TIMEOUT_S")))
        await asyncio.sleep(0)  # the read is admitted
        with pytest.raises(HTTPException) as refused:
            pool.check_admission("alice")
        assert refused.value.status_code == 429 and "dataset uploads" in refused.value.detail
        with pytest.raises(WorkerKilled) as killed:
            await running
        assert killed.value.timed_out and "NAS_INGEST_TIMEOUT_S" in killed.value.detail
        pool.check_admission("alice")  # free again

    try:
        asyncio.run(read())
    finally:
        pool.shutdown()


# -- the store, on SQLite and PostgreSQL -------------------------------------------------------------------


def test_store_keeps_datasets_per_owner(store: Store, make_spec: Any) -> None:
    alice, bob = Principal("alice"), Principal("bob")
    record = _record("alice", 1000, "1" * 64)
    assert store.create_dataset(record, "k1", max_owner_bytes=5000) == (record, True)
    assert store.create_dataset(_record("alice", 1000, "1" * 64).model_copy(update={"id": "2" * 32}), "k1") == (record, False)
    assert store.find_dataset("alice", "1" * 64, "k1") == record
    assert store.find_dataset("alice", "1" * 64, "k2") is None and store.find_dataset("bob", "1" * 64, "k1") is None
    assert store.get_dataset(record.id, alice) == record
    with pytest.raises(NotFound):
        store.get_dataset(record.id, bob)
    assert store.get_dataset(record.id, Principal("root", is_admin=True)) == record
    second = _record("alice", 3000, "3" * 64)
    store.create_dataset(second, "k1", max_owner_bytes=5000)
    assert store.owner_dataset_bytes("alice") == 4000 and store.owner_dataset_bytes("bob") == 0
    with pytest.raises(QuotaExceeded, match="NAS_LIMIT_OWNER_DATASET_BYTES"):
        store.create_dataset(_record("alice", 1001, "4" * 64), "k1", max_owner_bytes=5000)
    page, cursor = store.list_datasets(alice, limit=1)
    assert [d.id for d in page] == [second.id] and cursor is not None
    assert [d.id for d in store.list_datasets(alice, limit=1, cursor=cursor)[0]] == [record.id]
    assert store.list_datasets(bob) == ([], None)
    # a queued or running job naming it holds it; a finished one does not
    with scoped_catalog(StoreDatasetCatalog(store, "alice")):
        job = store.create_job(make_spec(dataset={"name": "upload", "params": {"id": record.id}}), "alice")
    with pytest.raises(IllegalTransition, match=job.id):
        store.delete_dataset(record.id, alice)
    with pytest.raises(NotFound):
        store.delete_dataset(record.id, bob)
    store.request_cancel(job.id)
    assert store.delete_dataset(record.id, alice) == record
    with pytest.raises(NotFound):
        store.get_dataset(record.id)
    # a job checked while its dataset existed is not queued once the dataset is gone
    with scoped_catalog(StoreDatasetCatalog(store, "alice")):
        late = make_spec(dataset={"name": "upload", "params": {"id": second.id}})
    store.delete_dataset(second.id, alice)
    with pytest.raises(UnknownDataset, match=second.id):
        store.create_job(late, "alice")

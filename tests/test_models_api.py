"""Users' models over HTTP against a live server (uvicorn on a localhost socket, uploads read in the
app's real worker processes): a small CNN exported by torch.onnx.export is stored with its input
shape, parameters, prunable layers and dense latency; identical uploads are stored once; each bad
upload answers a 4xx naming the problem and leaves no file and no row; another owner meets 404 on
every route and cannot search the model in a job; a model a queued job searches cannot be deleted.
The store's model methods run on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import helper
from sqlalchemy import func, select
from torch import nn

from api.app import API_PREFIX
from api.routes.datasets import FORM_OVERHEAD_BYTES, upload_dir
from api.routes.models import remove_strays
from nas.errors import IllegalTransition, NotFound, QuotaExceeded
from nas.models.stored import UnknownModel, scoped_model_catalog
from nas.settings import Settings
from nas.specs import ModelRecord
from nas.store import Principal, Store
from nas.store.artifacts import model_file, models_dir
from nas.store.model_catalog import StoreModelCatalog
from nas.store.tables import ModelRow
from tests.model_files import cnn, external_data, graph_model, onnx_bytes
from tests.sdk_server import serve

URL = f"{API_PREFIX}/models"
MODEL_LIMIT = 256 * 1024
QUOTA = 128 * 1024  # of each owner's datasets and models together


BAD_UPLOADS: dict[str, tuple[bytes, str]] = {
    "not onnx": (b"PK\x03\x04 this is a zip, not a model" * 10, "not an ONNX model"),
    "external data": (external_data(), "external data: tensor 'w' refers to data outside the file (weights.bin)"),
    "unsupported operator": (graph_model([helper.make_node("Sin", ["x"], ["y"], name="wave")]).SerializeToString(),
                             "unsupported operator Sin at node wave"),
    "checker failure": (graph_model([helper.make_node("Relu", ["nowhere"], ["y"])]).SerializeToString(),
                        "ONNX checker failed"),
}  # fmt: skip


# -- the live app ------------------------------------------------------------------------------------


@dataclass
class Live:
    client: httpx.Client
    store: Store
    settings: Settings
    keys: dict[str, str]

    def headers(self, owner: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[owner]}"}

    def upload(self, owner: str, filename: str, data: bytes, **fields: Any) -> Any:
        return self.client.post(URL, files={"file": (filename, data)}, data=fields, headers=self.headers(owner))

    def left(self) -> tuple[list[str], list[str], int]:
        """What the server keeps: files under uploads/, model folders, model rows."""
        uploads = upload_dir(self.settings)
        folders = models_dir(self.settings.artifact_dir)
        with self.store.engine.connect() as connection:
            rows = connection.scalar(select(func.count()).select_from(ModelRow))
        return (
            sorted(p.name for p in uploads.iterdir()) if uploads.exists() else [],
            sorted(p.name for p in folders.iterdir()) if folders.exists() else [],
            rows,
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("models-api")
    server = serve(home, limit_model_bytes=MODEL_LIMIT, limit_owner_dataset_bytes=QUOTA, auth_failures_per_minute=10**6)
    running = next(server)
    keys = {owner: running.store.create_api_key(owner) for owner in ("alice", "bob", "dave", "erin")}
    keys["root"] = running.store.create_api_key("root", is_admin=True)
    with httpx.Client(base_url=running.url, timeout=120) as client:
        yield Live(client, running.store, running.settings, keys)
    server.close()


@pytest.fixture(scope="module")
def cnn_file() -> bytes:
    return onnx_bytes(cnn())


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def refusal(response: Any) -> tuple[list[Any], str]:
    """``(loc, msg)`` of a 422's one error."""
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return error["loc"], error["msg"]


# -- uploads that work -----------------------------------------------------------------------------


def test_an_exported_cnn_is_stored_with_its_summary(live: Live, cnn_file: bytes) -> None:
    model = created(live.upload("alice", "digits-cnn.onnx", cnn_file))
    assert model["name"] == "digits-cnn" and model["owner"] == "alice"
    assert model["input_shape"] == [1, 8, 8] and model["num_outputs"] == 10
    # the exporter folds the BatchNorm into the convolution before it
    assert model["params"] == sum(p.numel() for m in cnn() if not isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert [(layer["kind"], layer["shape"]) for layer in model["layers"]] == [
        ("conv", [8, 1, 3, 3]), ("conv", [16, 8, 3, 3]), ("linear", [10, 256])]
    assert model["size_bytes"] == len(cnn_file) and model["sha256"] == hashlib.sha256(cnn_file).hexdigest()
    assert model["opset"] >= 13 and "pytorch" in model["producer"]
    assert set(model["dense_latency_ms"]) >= {"cpu"} and all(v > 0 for v in model["dense_latency_ms"].values())
    # the file itself is kept, as uploaded; the upload is not
    assert model_file(live.settings.artifact_dir, model["id"]).read_bytes() == cnn_file
    assert live.left()[0] == []

    got = live.client.get(f"{URL}/{model['id']}", headers=live.headers("alice"))
    assert got.status_code == 200 and got.json() == model
    assert model["id"] in [m["id"] for m in live.client.get(URL, headers=live.headers("alice")).json()["items"]]


def test_the_same_file_is_stored_once(live: Live, cnn_file: bytes) -> None:
    first = live.upload("alice", "a.onnx", cnn_file)
    again = live.upload("alice", "b.onnx", cnn_file, name="another name")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    # another owner's same file is their own model
    assert created(live.upload("bob", "a.onnx", cnn_file))["id"] != first.json()["id"]


def test_paging_the_list(live: Live) -> None:
    ids = [created(live.upload("dave", f"m{seed}.onnx", onnx_bytes(cnn(seed))))["id"] for seed in range(3)]
    first = live.client.get(URL, params={"limit": 2}, headers=live.headers("dave")).json()
    rest = live.client.get(URL, params={"limit": 2, "cursor": first["next_cursor"]}, headers=live.headers("dave")).json()
    assert [m["id"] for m in first["items"] + rest["items"]] == ids[::-1] and rest["next_cursor"] is None
    assert live.client.get(URL, params={"cursor": "made-up"}, headers=live.headers("dave")).status_code == 422
    assert live.client.get(URL, params={"limt": 2}, headers=live.headers("dave")).status_code == 422


# -- bad uploads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_is_refused_naming_the_problem_and_leaves_nothing(live: Live, case: str) -> None:
    data, words = BAD_UPLOADS[case]
    before = live.left()
    loc, message = refusal(live.upload("bob", "bad.onnx", data))
    assert loc == ["body", "file"] and words in message, message
    assert live.left() == before


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(live: Live) -> None:
    before = live.left()
    response = live.upload("bob", "big.onnx", b"\0" * (MODEL_LIMIT + 1))
    assert response.status_code == 413 and "NAS_LIMIT_MODEL_BYTES" in response.json()["detail"]
    # a declared length past the limit and the form's allowance is refused before a byte is read
    # (over a raw socket: an HTTP client will not declare more than it sends)
    url = httpx.URL(str(live.client.base_url))
    declared_only = (f"POST {URL} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {live.keys['bob']}\r\n"
                     "Content-Type: multipart/form-data; boundary=b0und4ry\r\n"
                     f"Content-Length: {MODEL_LIMIT + FORM_OVERHEAD_BYTES + 1}\r\n\r\n")  # fmt: skip
    with socket.create_connection((url.host, url.port), timeout=30) as connection:
        connection.sendall(declared_only.encode())
        status_line = connection.makefile("rb").readline()
    assert status_line.split()[1] == b"413", status_line
    assert live.left() == before


def test_models_count_towards_the_owner_quota_with_datasets(live: Live, cnn_file: bytes) -> None:
    rng = np.random.default_rng(0)
    arrays = io.BytesIO()
    np.savez(arrays, x=rng.normal(size=(2400, 10)).astype(np.float32), y=np.arange(2400) % 2)
    dataset = live.client.post(f"{API_PREFIX}/datasets", files={"file": ("rows.npz", arrays.getvalue())},
                               headers=live.headers("erin"))  # fmt: skip
    assert dataset.status_code == 201, dataset.text
    assert QUOTA - len(cnn_file) < dataset.json()["stored_bytes"] < QUOTA
    before = live.left()
    over = live.upload("erin", "cnn.onnx", cnn_file)
    assert over.status_code == 413 and "NAS_LIMIT_OWNER_DATASET_BYTES" in over.json()["detail"], over.text
    assert live.left() == before


@pytest.mark.parametrize(
    ("files", "field", "words"),
    [
        ({"name": (None, "no file")}, "file", "no model: send the ONNX file in part 'file'"),
        ({"file": ("m.onnx", b"x"), "label_column": (None, "y")}, "label_column", "unknown form field 'label_column'"),
        ({"file": ("m.onnx", b"x"), "name": (None, "bad\x07name")}, "name", "control and bidi characters are not allowed"),
        ({"file": ("m.onnx", b"x"), "name": (None, "n" * 201)}, "name", "at most 200 are allowed"),
    ],
)
def test_a_form_with_the_wrong_parts_is_refused(live: Live, files: dict[str, Any], field: str, words: str) -> None:
    before = live.left()
    loc, message = refusal(live.client.post(URL, files=files, headers=live.headers("bob")))
    assert loc == ["body", field] and words in message, message
    assert live.left() == before


# -- tenants, jobs and deletion -------------------------------------------------------------------------


def _job(model_id: str) -> dict[str, Any]:
    return {"search_space": {"name": "model_sparsity", "params": {"model_id": model_id}},
            "dataset": {"name": "digits", "params": {}}, "training": {"epochs": 1}, "budget": {"max_trials": 1}}  # fmt: skip


def model_routes(client: httpx.Client) -> list[tuple[str, str]]:
    """(method, path) of every operation on one model, read from the server's OpenAPI document."""
    return [
        (method.upper(), path)
        for path, operations in client.get(f"{API_PREFIX}/openapi.json").json()["paths"].items()
        if "{model_id}" in path
        for method in operations
    ]


def test_another_owner_meets_404_everywhere_and_cannot_search_it(live: Live) -> None:
    model = created(live.upload("alice", "private.onnx", onnx_bytes(cnn(7))))
    routes = model_routes(live.client)
    assert {(m, p.removeprefix(URL)) for m, p in routes} == {("GET", "/{model_id}"), ("DELETE", "/{model_id}")}
    before = live.left()
    for method, path in routes:
        response = live.client.request(method, path.replace("{model_id}", model["id"]), headers=live.headers("bob"))
        assert response.status_code == 404 and response.json()["detail"] == f"model {model['id']} not found"
    assert model["id"] not in live.client.get(URL, headers=live.headers("bob")).text
    # in a job, alice's id and an id never stored get the same answer
    answers = []
    for model_id in (model["id"], "0" * 32):
        loc, message = refusal(live.client.post(f"{API_PREFIX}/jobs", json=_job(model_id), headers=live.headers("bob")))
        assert loc == ["body", "search_space", "params", "model_id"] and model_id in message
        answers.append(message.replace(model_id, "ID"))
    assert answers[0] == answers[1]
    predict = {"architecture": {"search_space": {"name": "model_sparsity", "params": {"model_id": model["id"]}},
                                "arch": {}, "dataset": {"name": "digits", "params": {}}}}  # fmt: skip
    loc, message = refusal(live.client.post(f"{API_PREFIX}/latency/predict", json=predict, headers=live.headers("bob")))
    assert loc == ["body", "architecture", "search_space", "params", "model_id"] and model["id"] in message
    assert live.left() == before
    for owner in ("alice", "root"):  # alice (and an admin) still reach it
        assert live.client.get(f"{URL}/{model['id']}", headers=live.headers(owner)).status_code == 200


def test_a_model_a_queued_job_searches_cannot_be_deleted(live: Live) -> None:
    model = created(live.upload("alice", "used.onnx", onnx_bytes(cnn(8))))
    job = live.client.post(f"{API_PREFIX}/jobs", json=_job(model["id"]), headers=live.headers("alice"))
    assert job.status_code == 201, job.text
    refused = live.client.delete(f"{URL}/{model['id']}", headers=live.headers("alice"))
    assert refused.status_code == 409 and job.json()["id"] in refused.json()["detail"]
    assert model_file(live.settings.artifact_dir, model["id"]).is_file()
    cancel = live.client.post(f"{API_PREFIX}/jobs/{job.json()['id']}/cancel", headers=live.headers("alice"))
    assert cancel.status_code == 202
    assert live.client.delete(f"{URL}/{model['id']}", headers=live.headers("alice")).status_code == 204
    assert live.client.get(f"{URL}/{model['id']}", headers=live.headers("alice")).status_code == 404
    assert not model_file(live.settings.artifact_dir, model["id"]).parent.exists()
    loc, _ = refusal(live.client.post(f"{API_PREFIX}/jobs", json=_job(model["id"]), headers=live.headers("alice")))
    assert loc == ["body", "search_space", "params", "model_id"]


def test_strays_of_a_killed_server_are_removed_at_start(live: Live) -> None:
    kept = created(live.upload("alice", "kept.onnx", onnx_bytes(cnn(9))))
    stray = model_file(live.settings.artifact_dir, "f" * 32)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a model")
    remove_strays(live.store, live.settings)
    assert not stray.parent.exists() and model_file(live.settings.artifact_dir, kept["id"]).is_file()


# -- the store, on SQLite and PostgreSQL -------------------------------------------------------------------


def _record(owner: str, size: int, sha: str, model_id: str | None = None) -> ModelRecord:
    return ModelRecord(
        id=model_id or sha[:32], name="m", owner=owner, input_shape=[1, 8, 8], num_outputs=10, params=100,
        layers=[{"name": "0.weight", "kind": "conv", "shape": [8, 1, 3, 3], "params": 72}], opset=17,
        producer="pytorch", size_bytes=size, sha256=sha, dense_latency_ms={"cpu": 0.1},
        created_at=datetime(2026, 12, 4, tzinfo=timezone.utc),
    )  # fmt: skip


def test_store_keeps_models_per_owner(store: Store, make_spec: Any) -> None:
    alice, bob = Principal("alice"), Principal("bob")
    record = _record("alice", 1000, "1" * 64)
    assert store.create_model(record, max_owner_bytes=5000) == (record, True)
    assert store.create_model(_record("alice", 1000, "1" * 64, "2" * 32)) == (record, False)
    assert store.find_model("alice", "1" * 64) == record and store.find_model("bob", "1" * 64) is None
    assert store.get_model(record.id, alice) == record
    with pytest.raises(NotFound):
        store.get_model(record.id, bob)
    assert store.get_model(record.id, Principal("root", is_admin=True)) == record
    second = _record("alice", 3000, "3" * 64)
    store.create_model(second, max_owner_bytes=5000)
    # models count towards the owner's one storage quota, beside datasets
    assert store.owner_dataset_bytes("alice") == 4000 and store.owner_dataset_bytes("bob") == 0
    with pytest.raises(QuotaExceeded, match="NAS_LIMIT_OWNER_DATASET_BYTES"):
        store.create_model(_record("alice", 1001, "4" * 64), max_owner_bytes=5000)
    page, cursor = store.list_models(alice, limit=1)
    assert [m.id for m in page] == [second.id] and cursor is not None
    assert [m.id for m in store.list_models(alice, limit=1, cursor=cursor)[0]] == [record.id]
    assert store.list_models(bob) == ([], None)
    # the catalog a request of alice's installs knows her models only
    assert StoreModelCatalog(store, "alice").get(record.id) == record
    with pytest.raises(UnknownModel, match=record.id):
        StoreModelCatalog(store, "bob").get(record.id)
    # a queued or running job searching it holds it; a finished one does not
    with scoped_model_catalog(StoreModelCatalog(store, "alice")):
        spec = make_spec(search_space={"name": "model_sparsity", "params": {"model_id": record.id}})
        job = store.create_job(spec, "alice")
        late = make_spec(search_space={"name": "model_sparsity", "params": {"model_id": second.id}})
    with pytest.raises(IllegalTransition, match=job.id):
        store.delete_model(record.id, alice)
    with pytest.raises(NotFound):
        store.delete_model(record.id, bob)
    store.request_cancel(job.id)
    assert store.delete_model(record.id, alice) == record
    with pytest.raises(NotFound):
        store.get_model(record.id)
    # a job checked while its model existed is not queued once the model is gone
    store.delete_model(second.id, alice)
    with pytest.raises(UnknownModel, match=second.id):
        store.create_job(late, "alice")


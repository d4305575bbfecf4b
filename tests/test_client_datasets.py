"""The SDK's datasets, sync and async, against the real API served by uvicorn on a localhost port:
uploads of files and arrays, registration by path, listing, deletion, the server's refusals."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from nas.client import (
    AsyncClient,
    Client,
    Dataset,
    DatasetPage,
    NotFoundError,
    PayloadTooLarge,
    ServerError,
    ValidationError,
)
from nas.client.progress import UploadBar
from nas.store.artifacts import dataset_folder
from tests.dataset_files import CLASSES, FEATURES, ROWS, blobs, csv_file, image_zip, npz_file
from tests.sdk_server import Server, serve

UPLOAD_LIMIT = 1 << 20
QUOTA = 256 << 10

# the fixtures `owner` and `key`


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[Server]:
    """The real app with a folder to register datasets from, and limits small enough to pass."""
    yield from serve(tmp_path_factory.mktemp("datasets-server"), data_roots=(data_root,),
                     limit_upload_bytes=UPLOAD_LIMIT, limit_owner_dataset_bytes=QUOTA)


@pytest.fixture
def client(server: Server, key: str) -> Iterator[Client]:
    with Client(url=server.url, api_key=key, backoff=0.01) as c:
        yield c


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- uploads -------------------------------------------------------------------------------------


def test_upload_a_file_list_show_and_delete(client: Client, server: Server, owner: str, tmp_path: Path) -> None:
    path = npz_file(tmp_path / "blobs.npz")
    size = path.stat().st_size
    sent: list[tuple[int, int]] = []
    dataset = client.upload_dataset(path, name="blobs", progress=lambda done, total: sent.append((done, total)))
    assert isinstance(dataset, Dataset)
    assert (dataset.name, dataset.owner, dataset.format, dataset.source, dataset.path) == (
        "blobs", owner, "npz", "upload", None)
    assert dataset.input_shape == [FEATURES] and dataset.num_classes == CLASSES
    assert (dataset.n_train, dataset.n_test) == (48, 12) and not dataset.test_given  # the default 20 % split
    assert [sum(n) for n in zip(dataset.class_counts["train"], dataset.class_counts["test"])] == [ROWS // CLASSES] * 3
    assert dataset.size_bytes == size and dataset.sha256 == sha256(path)
    assert sent[-1] == (size, size) and {total for _, total in sent} == {size}
    assert [done for done, _ in sent] == sorted(done for done, _ in sent)
    assert (dataset_folder(server.settings.artifact_dir, dataset.id) / "data.npz").is_file()

    again = client.upload_dataset(path, name="another name", progress=False)
    assert again == dataset  # the same bytes and options: stored once, answered as stored
    reseeded = client.upload_dataset(path, split_seed=1, progress=False)
    assert reseeded.id != dataset.id and reseeded.options.split_seed == 1 and reseeded.name == "blobs"

    assert [d.id for d in client.datasets(page_size=1)] == [reseeded.id, dataset.id]  # newest first
    page = client.dataset_page(limit=1)
    assert isinstance(page, DatasetPage) and [d.id for d in page.items] == [reseeded.id] and page.next_cursor
    assert client.dataset(dataset.id) == dataset

    client.delete_dataset(dataset.id)
    assert not dataset_folder(server.settings.artifact_dir, dataset.id).exists()
    with pytest.raises(NotFoundError):
        client.dataset(dataset.id)
    with pytest.raises(NotFoundError):
        client.delete_dataset(dataset.id)
    assert [d.id for d in client.datasets()] == [reseeded.id]


def test_upload_arrays(client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the temporary .npz goes
    x, y = blobs()
    names = np.array(["cat", "dog", "eel"])[y]
    pair = client.upload_dataset((x, names), name="pets", progress=False)
    assert pair.format == "npz" and pair.class_names == ["cat", "dog", "eel"] and pair.input_shape == [FEATURES]

    x_test, y_test = blobs(rows=15, seed=1)
    given = client.upload_dataset({"x": x.reshape(ROWS, 1, 2, 4), "y": y, "x_test": x_test.reshape(15, 1, 2, 4),
                                   "y_test": y_test}, progress=False)
    assert given.test_given and (given.n_train, given.n_test) == (ROWS, 15) and given.input_shape == [1, 2, 4]
    assert list(tmp_path.iterdir()) == []  # the temporary files are gone

    with pytest.raises(TypeError, match="a file path, a tuple"):
        client.upload_dataset(42, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x and y"):
        client.upload_dataset({"x": x}, progress=False)
    with pytest.raises(ValueError, match="x and y"):
        client.upload_dataset({"x": x, "y": y, "labels": y}, progress=False)
    with pytest.raises(ValueError, match="both x_test and y_test"):
        client.upload_dataset({"x": x, "y": y, "x_test": x_test}, progress=False)
    with pytest.raises(ValueError, match="y holds Python objects"):
        client.upload_dataset((x, [{"class": int(c)} for c in y]), progress=False)
    with pytest.raises(ValueError, match="is a folder"):
        client.upload_dataset(tmp_path, progress=False)
    assert [d.id for d in client.datasets()] == [given.id, pair.id]


def test_the_light_client_uploads_files_without_numpy(server: Server, key: str, tmp_path: Path) -> None:
    """The light client has no numpy: files go as they are; arrays are refused, naming the install."""
    code = (
        "import sys\n"
        "sys.modules['numpy'] = None\n"
        "from nas.client import Client\n"
        "with Client() as client:\n"
        "    print(client.upload_dataset(sys.argv[1], label_column='species', progress=False).format)\n"
        "    try:\n"
        "        client.upload_dataset(([[0.0], [1.0]], [0, 1]), progress=False)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "NAS_URL": server.url,
           "NAS_API_KEY": key}
    result = subprocess.run([sys.executable, "-c", code, str(csv_file(tmp_path / "plants.csv"))], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "csv" and "pip install numpy" in result.stdout


def test_options_reach_the_server(client: Client, tmp_path: Path) -> None:
    table = client.upload_dataset(csv_file(tmp_path / "plants.csv"), label_column="species", test_fraction=0.25,
                                  split_seed=3, progress=False)
    assert table.format == "csv" and table.input_shape == [FEATURES] and (table.n_train, table.n_test) == (45, 15)
    assert table.options.label_column == "species" and table.options.split_seed == 3
    assert table.class_names == ["kind-0", "kind-1", "kind-2"]

    images = client.upload_dataset(image_zip(tmp_path / "colours.zip"), image_size=12, color="grayscale",
                                   progress=False)
    assert images.format == "images" and images.input_shape == [1, 12, 12] and images.class_names == ["blue", "red"]
    assert (images.options.image_size, images.options.color) == (12, "grayscale")


def test_register_by_path(client: Client, data_root: Path, tmp_path: Path, owner: str) -> None:
    inside = npz_file(data_root / f"{owner}.npz")
    dataset = client.register_dataset(str(inside), name="on the server")
    assert (dataset.source, dataset.name, dataset.sha256) == ("path", "on the server", sha256(inside))
    assert dataset.path is not None and Path(dataset.path) == inside
    assert client.register_dataset(inside.as_uri()).id == dataset.id  # a file:// URI, the same content

    outside = npz_file(tmp_path / "elsewhere.npz")
    with pytest.raises(ValidationError) as refused:
        client.register_dataset(str(outside))
    assert [e.path for e in refused.value.errors] == ["path"]
    with pytest.raises(ValidationError) as escaping:
        client.register_dataset(f"{data_root}/../{tmp_path.name}/elsewhere.npz")
    assert [e.path for e in escaping.value.errors] == ["path"]
    assert [d.id for d in client.datasets()] == [dataset.id]


# -- refusals --------------------------------------------------------------------------------------


def test_refusals_carry_the_servers_message(client: Client, tmp_path: Path) -> None:
    x, y = blobs()
    x[3, 2] = np.nan
    with pytest.raises(ValidationError) as nan:
        client.upload_dataset((x, y), progress=False)
    assert nan.value.status == 422 and [e.path for e in nan.value.errors] == ["file"]
    assert "NaN" in nan.value.errors[0].message and "NaN" in str(nan.value)

    with pytest.raises(ValidationError) as no_label:
        client.upload_dataset(csv_file(tmp_path / "plants.csv"), label_column="colour", progress=False)
    assert "species" in str(no_label.value)  # the columns there are

    with pytest.raises(ValidationError) as colour:
        client.upload_dataset(image_zip(tmp_path / "colours.zip"), color="purple", progress=False)
    assert [e.path for e in colour.value.errors] == ["color"]

    big = npz_file(tmp_path / "big.npz", x=np.zeros((UPLOAD_LIMIT // 8 // FEATURES + 1, FEATURES)),
                   y=np.zeros(UPLOAD_LIMIT // 8 // FEATURES + 1, dtype=np.int64))
    with pytest.raises(PayloadTooLarge) as too_large:
        client.upload_dataset(big, progress=False)
    assert too_large.value.status == 413 and "NAS_LIMIT_UPLOAD_BYTES" in str(too_large.value)
    assert list(client.datasets()) == []


def test_storage_quota(client: Client, tmp_path: Path) -> None:
    rows = QUOTA // 4 // 64 // 2  # half the quota, stored as float32
    first = client.upload_dataset(blobs(rows=rows, features=64), progress=False)
    assert first.stored_bytes < QUOTA
    with pytest.raises(PayloadTooLarge) as over:
        client.upload_dataset(blobs(rows=rows, features=64, seed=1), progress=False)
    assert "NAS_LIMIT_OWNER_DATASET_BYTES" in str(over.value)
    client.delete_dataset(first.id)  # room again
    client.upload_dataset(blobs(rows=rows, features=64, seed=1), progress=False)


def test_another_owners_dataset_is_not_found(client: Client, server: Server, tmp_path: Path) -> None:
    dataset = client.upload_dataset(npz_file(tmp_path / "mine.npz"), progress=False)
    with Client(url=server.url, api_key=server.store.create_api_key("stranger")) as stranger:
        for call in (lambda: stranger.dataset(dataset.id), lambda: stranger.delete_dataset(dataset.id)):
            with pytest.raises(NotFoundError):
                call()
        assert list(stranger.datasets()) == []
    assert client.dataset(dataset.id) == dataset


# -- retries -------------------------------------------------------------------------------------


def test_an_upload_is_safe_to_repeat(client: Client, server: Server, tmp_path: Path) -> None:
    path = npz_file(tmp_path / "blobs.npz")
    sent: list[int] = []
    server.faults.arm(1, status=502, method="POST", after=True)  # stored, but the answer was lost
    dataset = client.upload_dataset(path, progress=lambda done, total: sent.append(done))
    assert server.faults.seen == ["POST /api/v1/datasets"] * 2
    assert sent == [0, path.stat().st_size] * 2  # sent whole twice
    assert [d.id for d in client.datasets()] == [dataset.id]  # and stored once

    server.faults.arm(1, status=502, method="DELETE", after=True)  # deleted, but the answer was lost
    client.delete_dataset(dataset.id)
    assert server.faults.seen == [f"DELETE /api/v1/datasets/{dataset.id}"] * 2
    assert list(client.datasets()) == []

    server.faults.arm(1, status=500, method="POST")
    with pytest.raises(ServerError):  # a failure of the server's own is not repeated
        client.upload_dataset(path, progress=False)
    assert len(server.faults.seen) == 1


# -- progress ------------------------------------------------------------------------------------


def test_upload_bar_shows_bytes_then_the_wait(capsys: pytest.CaptureFixture[str], client: Client,
                                              tmp_path: Path) -> None:
    out = io.StringIO()
    with UploadBar("cells.tar.gz", 4_000_000, Console(file=out, force_terminal=True, width=120)) as report:
        report(1_000_000)
        report(4_000_000)
    assert "cells.tar.gz (sent; the server is reading it)" in out.getvalue() and "4.0/4.0 MB" in out.getvalue()

    client.upload_dataset(npz_file(tmp_path / "shown.npz"))  # progress=True: the bar goes to stderr
    assert "shown.npz" in capsys.readouterr().err


# -- async -----------------------------------------------------------------------------------------


def test_async_client(server: Server, key: str, owner: str, tmp_path: Path) -> None:
    path = npz_file(tmp_path / "blobs.npz")

    async def scenario() -> None:
        async with AsyncClient(server.url, api_key=key, backoff=0.01) as client:
            sent: list[int] = []
            dataset = await client.upload_dataset(path, name="async", progress=lambda done, total: sent.append(done))
            assert dataset.name == "async" and dataset.owner == owner and dataset.sha256 == sha256(path)
            assert sent[-1] == path.stat().st_size
            arrays = await client.upload_dataset(blobs(seed=2), progress=False)
            assert arrays.input_shape == [FEATURES] and arrays.id != dataset.id
            registered = await client.register_dataset(str(npz_file(server.settings.data_roots[0] / f"{owner}.npz")))
            assert registered.source == "path"

            assert [d.id async for d in client.datasets(page_size=2)] == [registered.id, arrays.id, dataset.id]
            page = await client.dataset_page(limit=2)
            assert isinstance(page, DatasetPage) and len(page.items) == 2 and page.next_cursor
            assert await client.dataset(dataset.id) == dataset

            await client.delete_dataset(dataset.id)
            with pytest.raises(NotFoundError):
                await client.dataset(dataset.id)
            x, y = blobs()
            with pytest.raises(ValidationError) as one_class:
                await client.upload_dataset((x, np.zeros_like(y)), progress=False)
            assert [e.path for e in one_class.value.errors] == ["file"] and "class" in str(one_class.value)
            with pytest.raises(PayloadTooLarge):
                await client.upload_dataset((np.zeros((UPLOAD_LIMIT // 32, 8)), np.arange(UPLOAD_LIMIT // 32) % 2),
                                            progress=False)

    asyncio.run(scenario())

"""The SDK's models, sync and async, against the real API served by uvicorn on a localhost port:
upload with progress, list, show, delete, the server's refusals, another owner's model."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nas.client import AsyncClient, Client, ConflictError, Model, ModelPage, NotFoundError, PayloadTooLarge, ValidationError
from tests.model_files import cnn, external_data, onnx_bytes
from tests.sdk_server import SPEC, Server, serve

MODEL_LIMIT = 256 << 10

# the fixtures `owner` and `key`


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("models-server"), limit_model_bytes=MODEL_LIMIT)


@pytest.fixture
def client(server: Server, key: str) -> Iterator[Client]:
    with Client(url=server.url, api_key=key, backoff=0.01) as c:
        yield c


def onnx_file(path: Path, seed: int = 0) -> Path:
    path.write_bytes(onnx_bytes(cnn(seed)))
    return path


def test_upload_list_show_and_delete(client: Client, owner: str, tmp_path: Path) -> None:
    path = onnx_file(tmp_path / "digits.onnx")
    sent: list[int] = []
    model = client.upload_model(path, progress=lambda done, total: sent.append(done))
    assert isinstance(model, Model) and model.name == "digits" and model.owner == owner
    assert model.input_shape == [1, 8, 8] and model.num_outputs == 10 and len(model.layers) == 3
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and sent[-1] == path.stat().st_size
    assert client.upload_model(path, name="again", progress=False) == model  # stored once
    other = client.upload_model(onnx_file(tmp_path / "other.onnx", seed=1), name="other", progress=False)
    assert [m.id for m in client.models(page_size=1)] == [other.id, model.id]
    page = client.model_page(limit=1)
    assert isinstance(page, ModelPage) and page.items == [other] and page.next_cursor
    assert client.model(model.id) == model
    client.delete_model(model.id)
    with pytest.raises(NotFoundError):
        client.model(model.id)
    client.delete_model(other.id)


def test_refusals_carry_the_servers_message(client: Client, tmp_path: Path) -> None:
    external = tmp_path / "external.onnx"
    external.write_bytes(external_data())
    with pytest.raises(ValidationError) as refused:
        client.upload_model(external, progress=False)
    assert refused.value.status == 422 and [e.path for e in refused.value.errors] == ["file"]
    assert "external data" in str(refused.value)
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * (MODEL_LIMIT + 1))
    with pytest.raises(PayloadTooLarge) as too_large:
        client.upload_model(big, progress=False)
    assert "NAS_LIMIT_MODEL_BYTES" in str(too_large.value)
    assert list(client.models()) == []


def test_another_owners_model_is_not_found_and_a_searched_one_stays(client: Client, server: Server, tmp_path: Path) -> None:
    model = client.upload_model(onnx_file(tmp_path / "mine.onnx", seed=2), progress=False)
    with Client(url=server.url, api_key=server.store.create_api_key("stranger")) as stranger:
        for call in (lambda: stranger.model(model.id), lambda: stranger.delete_model(model.id)):
            with pytest.raises(NotFoundError):
                call()
        assert list(stranger.models()) == []
    job = client.submit({**SPEC, "search_space": {"name": "model_sparsity", "params": {"model_id": model.id}}})
    with pytest.raises(ConflictError, match=job.id):
        client.delete_model(model.id)
    client.cancel(job.id)
    client.delete_model(model.id)


def test_an_upload_is_safe_to_repeat(client: Client, server: Server, tmp_path: Path) -> None:
    path = onnx_file(tmp_path / "repeated.onnx", seed=4)
    sent: list[int] = []
    server.faults.arm(1, status=502, method="POST", after=True)  # stored, but the answer was lost
    model = client.upload_model(path, progress=lambda done, total: sent.append(done))
    assert server.faults.seen == ["POST /api/v1/models"] * 2
    assert sent == [0, path.stat().st_size] * 2  # sent whole twice
    assert [m.id for m in client.models()] == [model.id]  # and stored once

    server.faults.arm(1, status=502, method="DELETE", after=True)  # deleted, but the answer was lost
    client.delete_model(model.id)
    assert server.faults.seen == [f"DELETE /api/v1/models/{model.id}"] * 2
    assert list(client.models()) == []


def test_async_client(server: Server, key: str, owner: str, tmp_path: Path) -> None:
    path = onnx_file(tmp_path / "async.onnx", seed=3)

    async def scenario() -> None:
        async with AsyncClient(server.url, api_key=key, backoff=0.01) as client:
            sent: list[int] = []
            model = await client.upload_model(path, name="async", progress=lambda done, total: sent.append(done))
            assert model.name == "async" and model.owner == owner and sent[-1] == path.stat().st_size
            assert [m.id async for m in client.models(page_size=1)] == [model.id]
            page = await client.model_page(limit=1)
            assert page.items == [model] and page.next_cursor is None
            assert await client.model(model.id) == model
            await client.delete_model(model.id)
            with pytest.raises(NotFoundError):
                await client.model(model.id)
            bad = tmp_path / "bad.onnx"
            bad.write_bytes(b"not a model at all")
            with pytest.raises(ValidationError, match="not an ONNX model"):
                await client.upload_model(bad, progress=False)

    asyncio.run(scenario())

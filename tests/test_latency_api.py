"""POST /api/v1/latency/predict over HTTP, on a real (SQLite) store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from api.app import create_app
from nas.settings import Settings
from nas.store import Store

API = "/api/v1"
URL = f"{API}/latency/predict"
LAYERS: list[dict[str, Any]] = [
    {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1, "density": 0.1},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "flatten"},
    {"type": "linear", "out_features": 64, "density": 0.05},
    {"type": "relu"},
    {"type": "linear", "out_features": 10},
]

pytestmark = [pytest.mark.parametrize("backend", ["sqlite"]), pytest.mark.usefixtures("torch_single_thread")]


@pytest.fixture
def client(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))
    settings = Settings(home=tmp_path / "home", data_dir=tmp_path, limit_params=1_000_000)
    with TestClient(create_app(store, settings)) as test_client:
        yield test_client


@pytest.fixture
def key(store: Store) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.create_api_key('alice')}"}


def test_predict_a_layer_list(client: TestClient, key: dict[str, str]) -> None:
    response = client.post(URL, json={"target": "cpu", "layers": LAYERS, "input_shape": [1, 28, 28]}, headers=key)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["latency_ms"] > 0 and body["input_shape"] == [1, 28, 28]
    assert body["target"]["target"] == "cpu" and body["target"]["batch_size"] == 1
    assert body["predictor"]["source"] in ("bundled", "machine")
    layers = {layer["name"]: layer for layer in body["layers"]}
    assert layers["0"]["kind"] in ("conv", "csr_conv") and layers["7"]["kernel"] == "dense"
    assert body["params"] == 16 * 9 + 16 + 32 + 16 * 14 * 14 * 64 + 64 + 64 * 10 + 10


def test_predict_a_recurrent_layer_list_with_a_batch(client: TestClient, key: dict[str, str]) -> None:
    layers = [{"type": "gru", "hidden_size": 32, "output": "last"}, {"type": "linear", "out_features": 10}]
    body = {"layers": layers, "input_shape": [12, 8], "batch_size": 4}
    response = client.post(URL, json=body, headers=key)
    assert response.status_code == 200, response.text
    assert response.json()["target"]["batch_size"] == 4
    assert any(layer["kind"] == "rnn" for layer in response.json()["layers"])


def test_predict_an_architecture_of_a_search_space(client: TestClient, key: dict[str, str]) -> None:
    architecture = {
        "search_space": {"name": "sparse_mlp", "params": {}},
        "arch": {"depth": 2, "width_0": 128, "width_1": 32, "activation": "relu"},
        "dataset": {"name": "digits", "params": {}},
    }
    dense = client.post(URL, json={"architecture": architecture}, headers=key)
    assert dense.status_code == 200, dense.text
    assert dense.json()["input_shape"] == [64] or dense.json()["input_shape"][-1] == 8
    sparse = client.post(URL, json={"architecture": architecture, "densities": 0.05}, headers=key)
    assert sparse.status_code == 200 and sparse.json()["latency_ms"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_predictions_follow_the_observations_in_the_database(
    client: TestClient, key: dict[str, str], store: Store
) -> None:
    """The API's prediction workers refit the correction on what trials' workers observed, as the dispatcher does."""
    from nas.latency import observe

    layers = [{"type": "flatten"}, {"type": "linear", "out_features": 128}, {"type": "relu"},
              {"type": "linear", "out_features": 10}]  # fmt: skip
    body = {"layers": layers, "input_shape": [1, 8, 8]}
    before = client.post(URL, json=body, headers=key).json()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    for _ in range(5):  # a trial's worker measured this model at three times the prediction, five times
        store.add_latency_observation(observe(model.eval(), (1, 8, 8), "cpu", measured_ms=3 * before["latency_ms"]))
    after = client.post(URL, json=body, headers=key).json()
    assert after["sum_ms"] == pytest.approx(before["sum_ms"])  # the same layers ...
    assert after["latency_ms"] > 1.5 * before["latency_ms"]  # ... and a correction refitted on the observations


def test_cuda_is_refused_naming_the_target(client: TestClient, key: dict[str, str]) -> None:
    response = client.post(URL, json={"target": "cuda", "layers": LAYERS, "input_shape": [1, 28, 28]}, headers=key)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "target"]
    assert "not available on this machine" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"layers": LAYERS}, ["body"]),
        ({"layers": LAYERS, "input_shape": [1, 28, 28], "architecture": {}}, ["body", "architecture", "search_space"]),
        ({"layers": [{"type": "attention"}], "input_shape": [4]}, ["body", "layers", 0]),
        ({"layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}], "input_shape": [8]}, ["body", "layers", 0]),
        ({"layers": [{"type": "linear", "out_features": 60000}] * 2, "input_shape": [60000]}, ["body", "layers"]),
        ({"layers": [{"type": "linear", "out_features": 4}], "input_shape": [4], "densities": {"x.weight": 0.5}},
         ["body", "densities"]),
    ],
)  # fmt: skip
def test_bad_requests_name_the_field(
    client: TestClient, key: dict[str, str], body: dict[str, Any], location: list[Any]
) -> None:
    response = client.post(URL, json=body, headers=key)
    assert response.status_code == 422, response.text
    locations = [error["loc"][: len(location)] for error in response.json()["detail"]]
    assert location in locations


def test_unknown_search_space_lists_the_valid_ones(client: TestClient, key: dict[str, str]) -> None:
    architecture = {"search_space": {"name": "nope"}, "arch": {}, "dataset": {"name": "digits"}}
    response = client.post(URL, json={"architecture": architecture}, headers=key)
    assert response.status_code == 422 and "sparse_mlp" in response.text


def test_needs_a_key(client: TestClient) -> None:
    assert client.post(URL, json={"layers": LAYERS, "input_shape": [1, 28, 28]}).status_code == 401

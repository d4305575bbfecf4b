"""Answers people can act on, and an OpenAPI document that says what the server enforces.

Each 422 names its field, says what was expected and suggests the nearest valid name; the document
states the server's own limits, registered names and formats; a 405 names every method of its path.
Through the real app on a real store (FastAPI's TestClient), the CLI through typer's runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from nas import registry
from nas.cli import app as cli_app
from nas.data.mnist import FILES, MNIST
from nas.settings import Settings
from nas.store import Store
from nas.timing.agent_targets import TARGET_PATTERN
from nas.timing.runtimes import RUNTIMES

API = "/api/v1"
SPEC: dict[str, Any] = {
    "name": "messages",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "budget": {"max_trials": 2},
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "data").mkdir()
    return Settings(home=tmp_path / "home", data_dir=tmp_path / "data", limit_trials_per_job=40)


@pytest.fixture
def client(store: Store, settings: Settings) -> TestClient:
    with TestClient(create_app(store, settings)) as test_client:
        yield test_client


@pytest.fixture
def headers(store: Store) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.create_api_key('alice')}"}


def _error(client: TestClient, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """The one error of submitting SPEC with ``overrides``."""
    response = client.post(f"{API}/jobs", json={**SPEC, **overrides}, headers=headers)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return error


# -- 422 messages ------------------------------------------------------------------------------


def test_an_unknown_field_lists_the_valid_ones_and_the_nearest(client: TestClient, headers: dict[str, str]) -> None:
    error = _error(client, headers, training={"epoch": 3})
    assert error["loc"] == ["body", "training", "epoch"]
    assert error["msg"].startswith("unknown field 'epoch' in training (valid: epochs, batch_size, optimizer, lr,")
    assert error["msg"].endswith("; did you mean 'epochs'?")

    error = _error(client, headers, sparsifier={"name": "magnitude", "params": {"sparsty": 0.9}})
    assert error["loc"] == ["body", "sparsifier", "params", "sparsty"]
    assert "unknown field 'sparsty' in sparsifier.params (valid: " in error["msg"]
    assert error["msg"].endswith("did you mean 'sparsity'?")


def test_an_unknown_name_suggests_the_nearest(client: TestClient, headers: dict[str, str]) -> None:
    error = _error(client, headers, search_space={"name": "sparse_mpl"})
    assert error["loc"] == ["body", "search_space", "name"]
    valid = ", ".join(registry.search_spaces.names())
    assert error["msg"] == f"unknown search space 'sparse_mpl' (valid: {valid}); did you mean 'sparse_mlp'?"

    error = _error(client, headers, training={"optimizer": "adamm"})
    assert error["msg"] == "'adamm' is not one of 'adam', 'adamw' or 'sgd'; did you mean 'adam'?"

    error = _error(client, headers, objectives=[{"metric": "acuracy", "direction": "maximize"}])
    assert error["loc"] == ["body", "objectives", 0, "metric"]
    assert error["msg"].startswith("metric 'acuracy' is unknown (valid: accuracy, loss,")
    assert error["msg"].endswith("did you mean 'accuracy'?")


def test_a_validator_message_has_no_pydantic_prefix(client: TestClient, headers: dict[str, str]) -> None:
    error = _error(client, headers, target="tpu")
    assert error["loc"] == ["body", "target"]
    assert error["msg"].startswith("unknown target 'tpu'") and "Value error" not in error["msg"]


def test_a_bare_plugin_name_shows_the_mapping_to_write(client: TestClient, headers: dict[str, str]) -> None:
    error = _error(client, headers, search_space="sparse_mlp")
    assert error["loc"] == ["body", "search_space"]
    assert error["msg"] == "expected a mapping {name, params}: write {name: sparse_mlp, params: {}}"


def test_an_unknown_query_parameter_suggests_the_nearest(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get(f"{API}/jobs", params={"stauts": "failed"}, headers=headers)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "stauts"]
    assert error["msg"] == "unknown query parameter 'stauts' (valid: cursor, limit, status); did you mean 'status'?"


def test_a_query_value_is_told_its_form_or_nearest_name(client: TestClient, headers: dict[str, str]) -> None:
    job = client.post(f"{API}/jobs", json=SPEC, headers=headers).json()
    response = client.get(f"{API}/jobs/{job['id']}/trials/table", params={"filter": "accuracy >> 1"}, headers=headers)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "filter", 0]
    assert error["msg"].startswith("'accuracy >> 1' is not of the form NAME OP VALUE")

    response = client.get(f"{API}/jobs/{job['id']}/points", params={"metric": "acuracy"}, headers=headers)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "metric", 0]
    assert error["msg"].startswith("'acuracy' is not one of 'accuracy', 'loss',")
    assert error["msg"].endswith("; did you mean 'accuracy'?")


def test_a_missing_key_says_where_the_cli_and_sdk_read_it(client: TestClient) -> None:
    response = client.get(f"{API}/jobs")
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert "NAS_API_KEY" in detail and "nas keys create" in detail and "Authorization: Bearer <key>" in detail


def test_missing_mnist_names_each_file_once_and_the_servers_setting(
    client: TestClient, headers: dict[str, str], settings: Settings
) -> None:
    error = _error(client, headers, dataset={"name": "mnist"})
    assert error["loc"] == ["body", "dataset", "name"]
    message = error["msg"]
    assert f"MNIST files missing from {settings.data_dir / 'mnist'}: " in message
    for name in FILES.values():
        assert message.count(name) == 1, name
    assert "The server reads datasets from its own NAS_DATA_DIR; the client's environment plays no part." in message
    assert MNIST.folder + "/" in message


def test_cli_help_names_its_environment() -> None:
    result = CliRunner().invoke(cli_app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "NAS_URL" in result.stdout and "NAS_API_KEY" in result.stdout and "nas keys create" in result.stdout


# -- the OpenAPI document ----------------------------------------------------------------------


def test_the_document_states_the_servers_limits_names_and_formats(client: TestClient, settings: Settings) -> None:
    document = client.get(f"{API}/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["Budget"]["properties"]["max_trials"]["maximum"] == settings.limit_trials_per_job == 40
    assert schemas["SearchSpaceRef"]["properties"]["name"]["enum"] == registry.search_spaces.names()
    assert schemas["StrategyRef"]["properties"]["name"]["enum"] == registry.strategies.names()
    server_own, agent_target = schemas["JobSpec"]["properties"]["target"]["anyOf"]
    assert server_own["enum"][0] == "cpu" and agent_target["pattern"] == TARGET_PATTERN
    assert schemas["PredictRequest"]["properties"]["target"]["enum"][0] == "cpu"
    assert schemas["JobSpec"]["properties"]["target_runtime"]["enum"] == [*RUNTIMES, None]
    assert "accuracy" in schemas["Objective"]["properties"]["metric"]["enum"]
    parameters = {p["name"]: p["schema"] for p in document["paths"][f"{API}/jobs"]["get"]["parameters"]}
    assert parameters["cursor"]["anyOf"][0]["pattern"].startswith("^eyJ")


def test_the_server_answers_as_the_document_says(client: TestClient, headers: dict[str, str]) -> None:
    too_many = _error(client, headers, budget={"max_trials": 41})
    assert too_many["loc"] == ["body", "budget", "max_trials"] and "at most 40 trials" in too_many["msg"]
    assert client.post(f"{API}/jobs", json={**SPEC, "budget": {"max_trials": 40}}, headers=headers).status_code == 201

    layers = [{"type": "linear", "out_features": 4, "bias": 0}]
    response = client.post(f"{API}/latency/predict", json={"layers": layers, "input_shape": [8]}, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:4] == ["body", "layers", 0, "linear"]

    response = client.delete(f"{API}/jobs", headers=headers)
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
    response = client.put(f"{API}/datasets/abc", headers=headers)
    assert response.status_code == 405 and response.headers["allow"] == "DELETE, GET"

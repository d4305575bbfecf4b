"""Architecture as data: the trials table sorts and filters on architecture keys like metrics, names
the valid ones for an unknown name, and every trial comes as CSV; on a real store through the real app."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from nas.arch import flatten, key_order
from nas.settings import Settings
from nas.specs import TrialState
from nas.store import Store

ARCHS = [
    {"depth": 1, "width_0": 64, "activation": "relu"},
    {"depth": 2, "width_0": 128, "width_1": 32, "activation": "gelu"},
    {"depth": 3, "width_0": 256, "width_1": 64, "width_2": 16, "activation": "relu"},
    {"depth": 2, "width_0": 32, "width_1": 256, "activation": "tanh"},
]
ACCURACY = [0.5, 0.9, 0.7, 0.6]


@pytest.fixture
def app_client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path))) as client:
        yield client


@pytest.fixture
def job(store: Store, make_spec: Any) -> dict[str, Any]:
    """Alice's job: four complete sparse_mlp-like trials and one queued."""
    key = store.create_api_key("alice")
    job = store.create_job(make_spec(), "alice")
    for arch, accuracy in zip(ARCHS, ACCURACY):
        trial = store.create_trial(job.id, arch)
        store.start_trial(trial.id, attempt=1)
        store.finish_trial(trial.id, TrialState.complete, {"accuracy": accuracy, "params": 1000 * arch["depth"]}, [])
    store.create_trial(job.id, {"depth": 1, "width_0": 8, "activation": "relu"})
    return {"id": job.id, "headers": {"Authorization": f"Bearer {key}"}}


def table(client: TestClient, job: dict[str, Any], **params: Any) -> Any:
    return client.get(f"/api/v1/jobs/{job['id']}/trials/table", params=params, headers=job["headers"])


def numbers(client: TestClient, job: dict[str, Any], **params: Any) -> list[int]:
    response = table(client, job, **params)
    assert response.status_code == 200, response.text
    return [t["number"] for t in response.json()["items"]]


def test_rows_carry_the_architecture_and_the_table_names_its_keys_in_sampling_order(app_client: TestClient, job: dict[str, Any]) -> None:
    page = table(app_client, job).json()
    assert page["arch_keys"] == ["depth", "width_0", "width_1", "width_2", "activation"]
    assert page["items"][1]["arch"] == ARCHS[1]


def test_filters_on_architecture_keys_numbers_and_words(app_client: TestClient, job: dict[str, Any]) -> None:
    assert numbers(app_client, job, filter="depth=2") == [1, 3]
    assert numbers(app_client, job, filter="width_0>=128") == [1, 2]
    assert numbers(app_client, job, filter="activation=relu") == [0, 2, 4]
    assert numbers(app_client, job, filter="activation!=relu") == [1, 3]
    assert numbers(app_client, job, filter="width_1<100") == [1, 2]  # trials without width_1 never pass
    assert numbers(app_client, job, filter=["depth!=3", "accuracy>0.55"]) == [1, 3]
    assert numbers(app_client, job, filter="arch.depth=3") == [2]


def test_sorts_by_architecture_keys_missing_values_last(app_client: TestClient, job: dict[str, Any]) -> None:
    assert numbers(app_client, job, sort="arch.width_1", order="desc") == [3, 2, 1, 4, 0]  # ties: by number, same order
    assert numbers(app_client, job, sort="arch.width_0") == [4, 3, 0, 1, 2]
    assert numbers(app_client, job, sort="arch.activation") == [1, 0, 2, 4, 3]  # gelu, relu x3, tanh


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"filter": "acuracy>0.9"}, "filter", ["'acuracy'", "did you mean accuracy", "depth", "width_0", "activation"]),
        ({"filter": "dept=2"}, "filter", ["did you mean depth"]),
        ({"filter": "zzz=2"}, "filter", ["no metric or architecture key 'zzz'. Metrics: accuracy,"]),
        ({"sort": "arch.widht_0"}, "sort", ["did you mean width_0"]),
        ({"sort": "metrics.acuracy"}, "sort", ["did you mean accuracy"]),
        ({"filter": "activation>relu"}, "filter", ["not of the form NAME OP VALUE"]),  # the schema's pattern: > takes a number
        ({"filter": "activation<2"}, "filter", ["activation is categorical"]),
        ({"filter": "depth=two"}, "filter", ["depth is a number"]),
    ],
)
def test_an_unknown_name_or_a_mismatched_value_is_refused_naming_the_valid_ones(
    app_client: TestClient, job: dict[str, Any], params: dict[str, str], field: str, words: list[str]
) -> None:
    response = table(app_client, job, **params)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:2] == ["query", field]
    for word in words:
        assert word in error["msg"], error["msg"]


def test_a_metric_no_trial_has_yet_is_a_valid_filter(app_client: TestClient, job: dict[str, Any]) -> None:
    assert numbers(app_client, job, filter="onnx_latency_ms<1") == []


def test_csv_has_every_trial_with_architecture_metrics_and_times(app_client: TestClient, job: dict[str, Any]) -> None:
    response = app_client.get(f"/api/v1/jobs/{job['id']}/trials.csv", headers=job["headers"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert job["id"] in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    header = list(rows[0])
    assert header == [
        "id", "number", "state", "arch.depth", "arch.width_0", "arch.width_1", "arch.width_2", "arch.activation",
        "accuracy", "params", "started_at", "finished_at",
    ]  # metrics in the registry's order: accuracy before params
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[1]["arch.width_1"] == "32" and rows[0]["arch.width_1"] == ""
    assert rows[2]["arch.activation"] == "relu" and rows[2]["params"] == "3000" and float(rows[1]["accuracy"]) == 0.9
    assert rows[4]["state"] == "queued" and rows[4]["accuracy"] == "" and rows[4]["finished_at"] == ""
    assert rows[0]["finished_at"].endswith("+00:00")


def test_csv_of_another_owners_job_is_404(app_client: TestClient, store: Store, job: dict[str, Any]) -> None:
    bob = {"Authorization": f"Bearer {store.create_api_key('bob')}"}
    assert app_client.get(f"/api/v1/jobs/{job['id']}/trials.csv", headers=bob).status_code == 404


def test_architecture_keys_keep_the_order_trials_sample_them() -> None:
    assert key_order([{"depth": 1, "width_0": 8, "act": "relu"}, {"depth": 2, "width_0": 8, "width_1": 4, "act": "relu"},
                      {"family": "conv", "depth": 1}]) == ["depth", "width_0", "width_1", "act", "family"]


def test_nested_architecture_values_are_dotted_keys() -> None:
    assert flatten({"depth": 2, "widths": [8, 16], "cell": {"op": "conv", "in": [0, 1]}}) == {
        "depth": 2, "widths.0": 8, "widths.1": 16, "cell.op": "conv", "cell.in.0": 0, "cell.in.1": 1,
    }

"""The metric registry is the one definition of trial metrics: /catalog serves it, job specs
validate objectives against it, and the SDK and CLI type and print metrics by it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from nas.metrics import LATENCY, METRICS, OBJECTIVES, PER_EPOCH, format_value, selected_value, selection_metric, typed
from nas.settings import Settings
from nas.specs import JobSpec, Trial
from nas.store import Store, make_engine, upgrade

API = "/api/v1"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(home=tmp_path / "home", data_dir=tmp_path / "data")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = Store(engine)
    headers = {"Authorization": f"Bearer {store.create_api_key('alice')}"}
    with TestClient(create_app(store, settings)) as client:
        yield client, headers


def spec(**fields: Any) -> dict[str, Any]:
    return {"search_space": {"name": "sparse_mlp"}, "dataset": {"name": "digits"}, **fields}


def test_the_catalog_serves_every_registered_metric_as_registered(api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    catalog = client.get(f"{API}/catalog", headers=headers).json()
    assert {"search_spaces", "strategies", "sparsifiers", "datasets", "targets", "job_spec_schema"} <= catalog.keys()
    assert catalog["metrics"] == [metric.model_dump() for metric in METRICS.values()]
    for entry in catalog["metrics"]:
        assert entry["description"] and entry["label"], entry["name"]
        assert entry["direction"] in ("maximize", "minimize", "none")
        assert entry["kind"] in ("integer", "float", "fraction")
        assert not entry["objective"] or entry["direction"] != "none", entry["name"]
    assert set(LATENCY) <= METRICS.keys() and set(PER_EPOCH) <= METRICS.keys()
    assert all(METRICS[name].split != "test" for name in PER_EPOCH)  # epochs never look at the test split
    assert "10th percentile" in METRICS["latency_ms"].description  # the decision, stated in one place


def test_objectives_validate_against_the_registry(api: tuple[TestClient, dict[str, str]]) -> None:
    for name in OBJECTIVES:
        direction = METRICS[name].direction
        assert JobSpec.model_validate(spec(objectives=[{"metric": name, "direction": direction}]))
    with pytest.raises(ValidationError, match="'latency_iqr_ms' is not an objective"):
        JobSpec.model_validate(spec(objectives=[{"metric": "latency_iqr_ms", "direction": "minimize"}]))

    client, headers = api
    refused = client.post(f"{API}/jobs", headers=headers,
                          json=spec(objectives=[{"metric": "latency_p99", "direction": "minimize"}]))
    assert refused.status_code == 422
    assert "'latency_p99' is unknown" in refused.text and "latency_median_ms" in refused.text


def test_selection_ranks_every_objective_on_a_validation_or_split_free_metric() -> None:
    assert selection_metric("accuracy") == "val_accuracy" and selection_metric("loss") == "val_loss"
    assert selection_metric("latency_ms") == "latency_ms"
    for name in OBJECTIVES:
        selected = METRICS[selection_metric(name)]
        assert selected.split != "test" and selected.direction == METRICS[name].direction, name
        assert selected.split is None or selected.per_epoch, name  # early stopping can rank on it
    assert selected_value({"accuracy": 0.9, "val_accuracy": 0.8}, "accuracy") == 0.8
    assert selected_value({"accuracy": 0.9}, "accuracy") == 0.9  # a trial recorded before validation splits
    assert selected_value({"accuracy": 0.9}, "latency_ms") is None


@pytest.mark.parametrize(("metric", "why"), [("test_accuracy", "selection never ranks on the test split"),
                                             ("test_loss", "selection never ranks on the test split"),
                                             ("val_accuracy", "objectives name the quantity")])
def test_objectives_name_the_quantity_never_a_split(metric: str, why: str,
                                                    api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    objectives = [{"metric": metric, "direction": "maximize"}]
    refused = client.post(f"{API}/jobs", headers=headers, json=spec(objectives=objectives))
    assert refused.status_code == 422
    assert why in refused.text and "accuracy, loss" in refused.text, refused.text


def test_integer_metrics_read_as_int_and_print_whole() -> None:
    now = datetime.now(timezone.utc)
    trial = Trial.model_validate({
        "id": "t", "job_id": "j", "number": 0, "state": "complete", "arch": {}, "created_at": now,
        "metrics": {"nonzero_params": 17230.0, "flops": 123456.0, "accuracy": 0.875, "latency_ms": 0.25},
    })
    assert trial.metrics == {"nonzero_params": 17230, "flops": 123456, "accuracy": 0.875, "latency_ms": 0.25}
    assert type(trial.metrics["nonzero_params"]) is int and type(trial.metrics["accuracy"]) is float
    assert trial.model_dump(mode="json")["metrics"]["flops"] == 123456.0  # the wire format is unchanged
    assert typed({"params": float("nan")})["params"] != typed({"params": float("nan")})["params"]  # NaN stays NaN
    assert format_value("nonzero_params", 17230.0) == "17230"
    assert format_value("latency_ms", 0.123456) == "0.1235"
    assert format_value("accuracy", None) == "-"

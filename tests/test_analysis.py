"""Parameter importance (nas.analysis and its route) and notes and user attributes on jobs and trials,
on a real store (SQLite and PostgreSQL) through the real app."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from nas import registry
from nas.analysis import NotAnalysable, param_importances
from nas.settings import Settings
from nas.specs import MAX_ANNOTATION, TrialState
from nas.store import Store


@pytest.fixture
def app_client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path))
    with TestClient(app) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def complete(store: Store, job_id: str, arch: dict[str, Any], metrics: dict[str, float]) -> str:
    trial = store.create_trial(job_id, arch)
    store.start_trial(trial.id, attempt=1)
    store.finish_trial(trial.id, TrialState.complete, metrics)
    return trial.id


def depth_driven(store: Store, job_id: str, n: int = 24) -> list[str]:
    """``n`` complete sparse_mlp trials whose accuracy rises with depth; the activation changes nothing."""
    rng = random.Random(1)
    ids = []
    for _ in range(n):
        depth = rng.randint(1, 3)
        arch = {"depth": depth, **{f"width_{i}": 64 for i in range(depth)}, "activation": rng.choice(["relu", "gelu"])}
        accuracy = 0.5 + 0.1 * depth + rng.uniform(-0.005, 0.005)
        ids.append(complete(store, job_id, arch, {"accuracy": accuracy, "latency_ms": 1.0 + depth}))
    return ids


@pytest.fixture
def alice(store: Store, make_spec: Any) -> dict[str, Any]:
    key = store.create_api_key("alice")
    job = store.create_job(make_spec(), "alice")
    return {"key": key, "job": job.id}


@pytest.mark.parametrize("evaluator", ["fanova", "ped_anova", "mdi"])
def test_importance_ranks_the_dimension_that_drives_the_objective_first(
    store: Store, alice: dict[str, Any], evaluator: str
) -> None:
    depth_driven(store, alice["job"])
    trials, _ = store.list_trials(alice["job"], state=TrialState.complete)
    space = registry.search_spaces.create("sparse_mlp", {})
    found = param_importances(trials, "accuracy", "maximize", space.dimensions(), evaluator)  # type: ignore[arg-type]
    ranked = {i.name: i.importance for i in found.importances}
    assert found.importances[0].name == "depth"
    assert ranked["depth"] > ranked["activation"]
    assert found.n_trials == 24
    # width_1 and width_2 exist only in deeper trials; width_0 is 64 in every one
    assert set(found.left_out) == {"width_0", "width_1", "width_2"}


def test_importance_infers_distributions_the_space_does_not_declare(store: Store, alice: dict[str, Any]) -> None:
    for i in range(8):
        cell = [["conv", i % 2], ["skip", 0]]
        complete(store, alice["job"], {"cell": cell, "lr_scale": 0.1 * (i % 4 + 1)}, {"accuracy": 0.5 + 0.4 * (i % 2)})
    trials, _ = store.list_trials(alice["job"], state=TrialState.complete)
    found = param_importances(trials, "accuracy", "maximize", declared=None)
    assert [i.name for i in found.importances][0] == "cell"


def test_importance_refuses_too_few_trials_or_nothing_varying(store: Store, alice: dict[str, Any]) -> None:
    complete(store, alice["job"], {"depth": 1, "width_0": 64, "activation": "relu"}, {"accuracy": 0.5})
    trials, _ = store.list_trials(alice["job"])
    with pytest.raises(NotAnalysable, match="at least 2 complete trials"):
        param_importances(trials, "accuracy", "maximize")
    complete(store, alice["job"], {"depth": 1, "width_0": 64, "activation": "relu"}, {"accuracy": 0.6})
    trials, _ = store.list_trials(alice["job"])
    with pytest.raises(NotAnalysable, match="no architecture dimension varies"):
        param_importances(trials, "accuracy", "maximize")
    complete(store, alice["job"], {"depth": 2, "width_0": 64, "width_1": 64, "activation": "relu"}, {"accuracy": 0.6})
    trials, _ = store.list_trials(alice["job"])
    with pytest.raises(NotAnalysable, match="every complete trial has the same 'accuracy'"):
        param_importances(trials[1:], "accuracy", "maximize")


def test_importance_route_answers_per_objective_and_evaluator(
    app_client: TestClient, store: Store, alice: dict[str, Any]
) -> None:
    url = f"/api/v1/jobs/{alice['job']}/importance"
    refused = app_client.get(url, headers=auth(alice["key"]))
    assert refused.status_code == 422
    assert "at least 2 complete trials" in refused.json()["detail"][0]["msg"]

    depth_driven(store, alice["job"])
    answer = app_client.get(url, headers=auth(alice["key"]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["objective"], body["direction"], body["evaluator"], body["n_trials"]) == ("accuracy", "maximize", "fanova", 24)
    assert body["importances"][0]["name"] == "depth"
    assert sum(i["importance"] for i in body["importances"]) == pytest.approx(1.0)

    latency = app_client.get(url, params={"objective": "latency_ms", "evaluator": "mdi"}, headers=auth(alice["key"]))
    assert latency.status_code == 200, latency.text
    assert (latency.json()["direction"], latency.json()["importances"][0]["name"]) == ("minimize", "depth")

    # a new complete trial is counted (the answer is kept per complete-trial count)
    complete(store, alice["job"], {"depth": 2, "width_0": 64, "width_1": 64, "activation": "relu"}, {"accuracy": 0.7})
    assert app_client.get(url, headers=auth(alice["key"])).json()["n_trials"] == 25


def test_importance_route_names_what_is_wrong(app_client: TestClient, store: Store, alice: dict[str, Any]) -> None:
    url = f"/api/v1/jobs/{alice['job']}/importance"
    unknown = app_client.get(url, params={"objective": "acuracy"}, headers=auth(alice["key"]))
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["query", "objective"]
    assert unknown.json()["detail"][0]["msg"].startswith("'acuracy' is not one of 'accuracy',")
    assert unknown.json()["detail"][0]["msg"].endswith("; did you mean 'accuracy'?")
    bad = app_client.get(url, params={"evaluator": "shap"}, headers=auth(alice["key"]))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "evaluator"]
    bob = store.create_api_key("bob")
    assert app_client.get(url, headers=auth(bob)).status_code == 404


def test_trial_note_and_attributes_are_set_merged_and_removed(
    app_client: TestClient, store: Store, alice: dict[str, Any]
) -> None:
    trial = complete(store, alice["job"], {"depth": 1, "width_0": 64, "activation": "relu"}, {"accuracy": 0.5})
    url = f"/api/v1/trials/{trial}"
    first = app_client.patch(url, json={"note": "best so far\nrerun with seed 2", "user_attrs": {"tag": "a", "seed": 1}},
                             headers=auth(alice["key"]))  # fmt: skip
    assert first.status_code == 200, first.text
    assert (first.json()["note"], first.json()["user_attrs"]) == ("best so far\nrerun with seed 2", {"tag": "a", "seed": 1})
    second = app_client.patch(url, json={"user_attrs": {"tag": None, "ok": True}}, headers=auth(alice["key"]))
    assert (second.json()["note"], second.json()["user_attrs"]) == ("best so far\nrerun with seed 2", {"seed": 1, "ok": True})
    cleared = app_client.patch(url, json={"note": ""}, headers=auth(alice["key"]))
    assert cleared.json()["note"] is None
    listed, _ = store.list_trials(alice["job"])
    assert listed[0].user_attrs == {"seed": 1, "ok": True}


def test_annotations_over_the_cap_or_from_another_owner_are_refused(
    app_client: TestClient, store: Store, alice: dict[str, Any]
) -> None:
    trial = complete(store, alice["job"], {"depth": 1, "width_0": 64, "activation": "relu"}, {"accuracy": 0.5})
    url = f"/api/v1/trials/{trial}"
    long = app_client.patch(url, json={"note": "x" * (MAX_ANNOTATION + 1)}, headers=auth(alice["key"]))
    assert long.status_code == 422 and long.json()["detail"][0]["loc"] == ["body", "note"]
    big = {f"k{i}": "v" * 90 for i in range(120)}  # under the key limit, over the byte cap
    large = app_client.patch(url, json={"user_attrs": big}, headers=auth(alice["key"]))
    assert large.status_code == 422 and large.json()["detail"][0]["loc"] == ["body", "user_attrs"]
    assert f"at most {MAX_ANNOTATION}" in large.json()["detail"][0]["msg"]
    nested = app_client.patch(url, json={"user_attrs": {"cfg": {"a": 1}}}, headers=auth(alice["key"]))
    assert nested.status_code == 422 and nested.json()["detail"][0]["loc"][:3] == ["body", "user_attrs", "cfg"]
    escape = app_client.patch(url, json={"note": "\x1b[2J"}, headers=auth(alice["key"]))
    assert escape.status_code == 422 and "control" in escape.json()["detail"][0]["msg"]
    bob = store.create_api_key("bob")
    assert app_client.patch(url, json={"note": "mine"}, headers=auth(bob)).status_code == 404
    assert store.get_trial(trial).note is None


def test_job_note_and_attributes_through_patch(app_client: TestClient, store: Store, alice: dict[str, Any]) -> None:
    url = f"/api/v1/jobs/{alice['job']}"
    set_ = app_client.patch(url, json={"note": "baseline run", "user_attrs": {"paper": "fig3"}}, headers=auth(alice["key"]))
    assert set_.status_code == 200, set_.text
    assert (set_.json()["note"], set_.json()["user_attrs"]) == ("baseline run", {"paper": "fig3"})
    assert set_.json()["spec"]["budget"]["max_trials"] == 5  # the budget is left alone
    removed = app_client.patch(url, json={"user_attrs": {"paper": None}}, headers=auth(alice["key"]))
    assert (removed.json()["note"], removed.json()["user_attrs"]) == ("baseline run", {})
    assert store.get_job(alice["job"]).note == "baseline run"
    typo = app_client.patch(url, json={"notes": "x"}, headers=auth(alice["key"]))
    assert typo.status_code == 422 and typo.json()["detail"][0]["loc"] == ["body", "notes"]
    bob = store.create_api_key("bob")
    assert app_client.patch(url, json={"note": "mine"}, headers=auth(bob)).status_code == 404
    admin = store.create_api_key("root", is_admin=True)
    assert app_client.patch(url, json={"note": "checked"}, headers=auth(admin)).json()["note"] == "checked"


def test_importance_ranks_the_validation_metric_selection_uses(store: Store, alice: dict[str, Any]) -> None:
    rng = random.Random(2)
    for _ in range(16):
        depth, activation = rng.randint(1, 3), rng.choice(["relu", "gelu"])
        arch = {"depth": depth, **{f"width_{i}": 64 for i in range(depth)}, "activation": activation}
        # validation accuracy follows the depth; test accuracy, which selection never sees, the activation
        complete(store, alice["job"], arch, {"val_accuracy": 0.5 + 0.1 * depth, "accuracy": 0.9 if activation == "relu" else 0.6})
    trials, _ = store.list_trials(alice["job"])
    found = param_importances(trials, "accuracy", "maximize")
    assert (found.objective, found.metric, found.importances[0].name) == ("accuracy", "val_accuracy", "depth")

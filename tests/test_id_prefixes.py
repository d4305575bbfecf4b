"""Unique id prefixes work wherever ids do (as git and docker accept them), among the ids the viewer
may see only; on a real store through the real app."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydantic
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from nas.errors import AmbiguousId, NotFound
from nas.settings import Settings
from nas.models.stored import scoped_model_catalog
from nas.specs import DatasetOptions, DatasetRecord, ModelRecord, TrialState
from nas.store import Principal, Store
from nas.store.model_catalog import StoreModelCatalog
from search_spaces.model_sparsity import ModelSparsity


@pytest.fixture
def ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids the store hands out next, in order: chosen so that some share a prefix."""
    chosen = [
        "abcd1111" + "0" * 24,  # alice's job
        "abcd2222" + "0" * 24,  # alice's second job: shares "abcd" with the first
        "abce0000" + "0" * 24,  # bob's job: shares "abc" with alice's
        "feed0001" + "0" * 24,  # trials of alice's first job
        "feed0002" + "0" * 24,
        "beef0001" + "0" * 24,  # a trial of bob's job
    ]
    handed = iter(chosen)
    monkeypatch.setattr("nas.store.store._new_id", lambda: next(handed))
    return chosen


@pytest.fixture
def setup(store: Store, make_spec: Any, ids: list[str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    keys = {owner: store.create_api_key(owner) for owner in ("alice", "bob")}
    alice_job = store.create_job(make_spec(), "alice")
    store.create_job(make_spec(), "alice")
    bob_job = store.create_job(make_spec(), "bob")
    for _ in range(2):
        trial = store.create_trial(alice_job.id, {"depth": 1})
        store.start_trial(trial.id, attempt=1)
        store.finish_trial(trial.id, TrialState.complete, {"accuracy": 0.5}, [])
    store.create_trial(bob_job.id, {"depth": 1})
    with TestClient(create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path))) as client:
        yield {"client": client, "headers": {o: {"Authorization": f"Bearer {k}"} for o, k in keys.items()}}


def get(setup: dict[str, Any], path: str, owner: str = "alice") -> Any:
    return setup["client"].get(f"/api/v1{path}", headers=setup["headers"][owner])


def test_a_unique_prefix_reads_the_job_its_trials_and_a_trial(setup: dict[str, Any], ids: list[str]) -> None:
    assert get(setup, "/jobs/abcd1").json()["id"] == ids[0]
    assert get(setup, "/jobs/ABCD2").json()["id"] == ids[1]  # hex digits in either case
    assert [t["id"] for t in get(setup, "/jobs/abcd1/trials").json()["items"]] == [ids[3], ids[4]]
    assert get(setup, "/jobs/abcd1/trials/table").json()["total"] == 2
    assert get(setup, "/jobs/abcd1/pareto").status_code == 200
    assert get(setup, "/jobs/abcd1/trials.csv").text.count("\n") == 3
    assert get(setup, "/trials/feed0002").json()["id"] == ids[4]
    assert get(setup, "/dashboard/jobs/abcd1").json()["id"] == ids[0]


def test_an_ambiguous_prefix_is_422_saying_how_many_match(setup: dict[str, Any]) -> None:
    for path, param, count in (("/jobs/abcd", "job_id", "2 jobs"), ("/trials/feed", "trial_id", "2 trials")):
        response = get(setup, path)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["path", param] and count in error["msg"] and "more of the id" in error["msg"]


def test_a_too_short_prefix_is_404_saying_the_minimum(setup: dict[str, Any]) -> None:
    response = get(setup, "/jobs/abc")
    assert response.status_code == 404 and "at least 4 characters" in response.json()["detail"]


def test_a_prefix_never_matches_nor_counts_another_owners_ids(setup: dict[str, Any], ids: list[str]) -> None:
    assert get(setup, "/jobs/abce").status_code == 404  # bob's job, asked for by alice
    assert get(setup, "/jobs/abce", owner="bob").json()["id"] == ids[2]
    assert get(setup, "/trials/beef").status_code == 404
    assert get(setup, "/jobs/abcd", owner="bob").status_code == 404  # alice's two jobs are not "ambiguous" for bob


def test_changes_take_a_prefix(setup: dict[str, Any], ids: list[str]) -> None:
    client, alice = setup["client"], setup["headers"]["alice"]
    response = client.post("/api/v1/jobs/abcd2/cancel", headers=alice)
    assert response.status_code == 202 and response.json()["id"] == ids[1]
    noted = client.patch("/api/v1/trials/feed0001", json={"note": "widest"}, headers=alice)
    assert noted.status_code == 200 and noted.json()["id"] == ids[3] and noted.json()["note"] == "widest"
    assert client.patch("/api/v1/trials/beef", json={"note": "x"}, headers=alice).status_code == 404  # bob's


def test_the_store_resolves_prefixes_for_an_admin_among_every_owner(store: Store, make_spec: Any, ids: list[str]) -> None:
    for owner in ("alice", "alice", "bob"):
        store.create_job(make_spec(), owner)
    admin = Principal("root", is_admin=True)
    assert store.get_job("abce", admin).id == ids[2]  # bob's, found for an admin
    with pytest.raises(AmbiguousId, match="2 jobs"):
        store.get_job("abcd", admin)
    with pytest.raises(NotFound):
        store.get_job("0000", admin)


def _dataset(owner: str, dataset_id: str) -> DatasetRecord:
    return DatasetRecord(
        id=dataset_id, name="table", owner=owner, format="npz", source="upload", input_shape=[3], num_classes=2,
        class_names=["0", "1"], class_counts={"train": [40, 40], "test": [10, 10]}, n_train=80, n_test=20,
        size_bytes=100, stored_bytes=100, sha256=dataset_id * 2, options=DatasetOptions(), test_given=False,
        summary={}, created_at=datetime.now(timezone.utc),
    )  # fmt: skip


def test_a_spec_names_a_dataset_by_prefix_and_keeps_its_whole_id(store: Store, tmp_path: Path) -> None:
    """The stored spec holds the whole id, so a prefix that later becomes ambiguous never changes what ran."""
    key = store.create_api_key("alice")
    store.create_api_key("bob")
    for owner, dataset_id in (("alice", "cafe1" + "0" * 27), ("alice", "cafe2" + "0" * 27), ("bob", "d00d" + "0" * 28)):
        store.create_dataset(_dataset(owner, dataset_id), dataset_id)
    spec = {"search_space": {"name": "sparse_mlp", "params": {}}, "budget": {"max_trials": 2}}
    with TestClient(create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path))) as client:

        def submit(dataset_id: str) -> Any:
            body = {**spec, "dataset": {"name": "upload", "params": {"id": dataset_id}}}
            return client.post("/api/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})

        job = submit("cafe2")
        assert job.status_code == 201, job.text
        assert job.json()["spec"]["dataset"]["params"]["id"] == "cafe2" + "0" * 27
        assert store.get_job(job.json()["id"]).spec["dataset"]["params"]["id"] == "cafe2" + "0" * 27
        for prefix, says in (("cafe", "2 datasets"), ("d00d", "no dataset d00d")):  # bob's is unknown to alice
            refused = submit(prefix)
            assert refused.status_code == 422, refused.text
            (error,) = refused.json()["detail"]
            assert error["loc"][-3:] == ["dataset", "params", "id"]
            assert says in error["msg"]


def test_a_model_sparsity_space_names_a_model_by_prefix(store: Store) -> None:
    record = ModelRecord(
        id="fade1" + "0" * 27, name="m", owner="alice", input_shape=[1, 8, 8], num_outputs=10, params=100,
        layers=[{"name": "0.weight", "kind": "conv", "shape": [8, 1, 3, 3], "params": 72}], opset=17,
        producer="pytorch", size_bytes=100, sha256="1" * 64, dense_latency_ms={"cpu": 0.1},
        created_at=datetime.now(timezone.utc),
    )  # fmt: skip
    store.create_model(record)
    store.create_model(record.model_copy(update={"id": "fade2" + "0" * 27, "sha256": "2" * 64}))
    with scoped_model_catalog(StoreModelCatalog(store, "alice")):
        assert ModelSparsity.Params.model_validate({"model_id": "fade1"}).model_id == record.id
        with pytest.raises(pydantic.ValidationError, match="2 models"):
            ModelSparsity.Params.model_validate({"model_id": "fade"})
    with scoped_model_catalog(StoreModelCatalog(store, "bob")), pytest.raises(pydantic.ValidationError, match="no model"):
        ModelSparsity.Params.model_validate({"model_id": "fade1"})

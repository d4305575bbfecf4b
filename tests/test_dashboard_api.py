"""The dashboard's JSON routes and files, on a real store (SQLite and PostgreSQL), through the real app."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from api.queries import JobColumns, TrialFilter
from api.routes.dashboard_api import hypervolume_history
from nas.settings import Settings
from nas.specs import JobStatus, LayerInfo, Objective, TrialState
from nas.store import Artifact, Store
from nas.store.tables import TrialRow

OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]


@pytest.fixture
def app_client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path))
    with TestClient(app) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def finished(store: Store, job_id: str, metrics: dict[str, float], layers: list[LayerInfo] = (), parent: str | None = None, state: TrialState = TrialState.complete, epochs: list[dict[str, float]] = ()) -> str:
    trial = store.create_trial(job_id, {"depth": 1}, parent_id=parent)
    store.start_trial(trial.id, attempt=1)
    for epoch, values in enumerate(epochs, start=1):
        store.report_epoch(trial.id, epoch, values)
    store.finish_trial(trial.id, state, metrics, list(layers))
    return trial.id


@pytest.fixture
def job(store: Store, make_spec: Any) -> dict[str, Any]:
    """Alice's job: four finished trials, one queued; trial 3 is trial 1's child."""
    key = store.create_api_key("alice")
    job = store.create_job(make_spec(objectives=OBJECTIVES), "alice")
    layer = lambda name, d: LayerInfo(name=name, shape=[8, 4], density=d, pattern="unstructured", kernel="csr")  # noqa: E731
    ids = [
        finished(store, job.id, {"accuracy": 0.5, "latency_ms": 2.0, "sparsity": 0.9}, [layer("fc0.weight", 0.1), layer("out.weight", 0.5)],
                 epochs=[{"accuracy": 0.3}, {"accuracy": 0.5}]),
        finished(store, job.id, {"accuracy": 0.9, "latency_ms": 3.0, "sparsity": 0.5}, [layer("fc0.weight", 0.5), layer("fc1.weight", 0.4), layer("out.weight", 0.6)]),
        finished(store, job.id, {"accuracy": 0.7, "latency_ms": 1.0, "sparsity": 0.95}, [layer("fc0.weight", 0.05), layer("out.weight", 0.2)]),
    ]
    ids.append(finished(store, job.id, {"accuracy": 0.6, "sparsity": 0.8}, parent=ids[1], state=TrialState.pruned))
    ids.append(store.create_trial(job.id, {"depth": 2}).id)
    store.set_best_trial(job.id, ids[1])
    return {"key": key, "id": job.id, "trials": ids}


def table(client: TestClient, job: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{job['id']}/trials/table", params=params, headers=auth(job["key"]))
    assert response.status_code == 200, response.text
    return response.json()


def numbers(page: dict[str, Any]) -> list[int]:
    return [t["number"] for t in page["items"]]


def test_table_sorts_by_a_metric_with_trials_lacking_it_last(app_client: TestClient, job: dict[str, Any]) -> None:
    assert numbers(table(app_client, job, sort="metrics.accuracy", order="desc")) == [1, 2, 3, 0, 4]
    assert numbers(table(app_client, job, sort="metrics.accuracy", order="asc")) == [0, 3, 2, 1, 4]
    assert numbers(table(app_client, job, sort="metrics.latency_ms", order="asc")) == [2, 0, 1, 3, 4]
    assert numbers(table(app_client, job, sort="number", order="desc")) == [4, 3, 2, 1, 0]


def test_table_filters_by_state_and_metric_ranges_and_pages(app_client: TestClient, job: dict[str, Any]) -> None:
    page = table(app_client, job, state=["complete", "pruned"], filter=["sparsity>=0.8"], sort="metrics.sparsity", order="desc")
    assert numbers(page) == [2, 0, 3] and page["total"] == 3
    page = table(app_client, job, state="complete", filter=["accuracy>0.5", "latency_ms<=3"])
    assert numbers(page) == [1, 2]
    page = table(app_client, job, limit=2, offset=2)
    assert numbers(page) == [2, 3] and page["total"] == 5 and page["offset"] == 2
    row = table(app_client, job, limit=1)["items"][0]
    assert row["metrics"]["accuracy"] == 0.5 and row["state"] == "complete" and row["updated_at"]
    assert row["arch"] == {"depth": 1}
    assert row["has_model"] is False
    child = table(app_client, job, filter=["accuracy=0.6"])["items"][0]
    assert child["parent_id"] == job["trials"][1] and child["parent_number"] == 1


def test_table_rows_say_which_trials_have_a_model(app_client: TestClient, store: Store, job: dict[str, Any]) -> None:
    store.add_artifact(Artifact(job["trials"][1], "model", "safetensors", "x/model.safetensors", 10, "0" * 64))
    assert [r["has_model"] for r in table(app_client, job)["items"]] == [False, True, False, False, False]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"filter": "accuracy >> 1"}, "filter"),
        ({"filter": "accuracy>=nan"}, "filter"),
        ({"filter": "acc'uracy>1"}, "filter"),
        ({"sort": "metrics.a-b"}, "sort"),
        ({"sort": "arch"}, "sort"),
    ],
)
def test_table_refuses_a_bad_filter_or_sort_naming_it(app_client: TestClient, job: dict[str, Any], params: dict[str, str], field: str) -> None:
    response = app_client.get(f"/api/v1/jobs/{job['id']}/trials/table", params=params, headers=auth(job["key"]))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["query", field]  # and which filter, when one of several


def test_trial_filter_parses_every_operator_and_words_for_equality() -> None:
    assert TrialFilter.parse(" sparsity >= 0.9 ") == TrialFilter("sparsity", ">=", 0.9)
    assert [TrialFilter.parse(f"a{op}1").op for op in (">", "<", "=", "!=", "<=")] == [">", "<", "=", "!=", "<="]
    assert TrialFilter.parse("activation!=relu") == TrialFilter("activation", "!=", "relu")
    assert TrialFilter.parse("arch.sparsity=0.5") == TrialFilter("arch.sparsity", "=", 0.5)
    with pytest.raises(ValueError, match="not a number"):
        TrialFilter.parse("activation>relu")


def test_every_dashboard_route_hides_another_owners_job(app_client: TestClient, store: Store, job: dict[str, Any]) -> None:
    bob = auth(store.create_api_key("bob"))
    trial = job["trials"][0]
    for path in [
        f"/api/v1/jobs/{job['id']}/trials/table", f"/api/v1/jobs/{job['id']}/points", f"/api/v1/jobs/{job['id']}/density",
        f"/api/v1/jobs/{job['id']}/history?trial={trial}", f"/api/v1/jobs/{job['id']}/hypervolume",
        f"/api/v1/dashboard/jobs/{job['id']}", f"/api/v1/trials/{trial}/lineage",
    ]:
        assert app_client.get(path, headers=bob).status_code == 404, path
        assert app_client.get(path).status_code == 401, path
    assert app_client.get("/api/v1/dashboard/jobs", headers=bob).json()["items"] == []


def test_admin_sees_every_job(app_client: TestClient, store: Store, job: dict[str, Any]) -> None:
    admin = auth(store.create_api_key("root", is_admin=True))
    assert app_client.get(f"/api/v1/jobs/{job['id']}/points", headers=admin).status_code == 200


def test_points_are_columns_of_every_trial(app_client: TestClient, job: dict[str, Any]) -> None:
    points = app_client.get(f"/api/v1/jobs/{job['id']}/points", headers=auth(job["key"])).json()
    assert points["number"] == [0, 1, 2, 3, 4]
    assert points["state"] == ["complete", "complete", "complete", "pruned", "queued"]
    assert points["metrics"]["accuracy"] == [0.5, 0.9, 0.7, 0.6, None]
    assert points["metrics"]["latency_ms"][3] is None
    assert points["parent_id"][3] == job["trials"][1]
    assert points["finished_at"][0] > 0 and points["finished_at"][4] is None
    chosen = app_client.get(f"/api/v1/jobs/{job['id']}/points", params={"metric": ["sparsity"]}, headers=auth(job["key"])).json()
    assert list(chosen["metrics"]) == ["sparsity"]


def test_density_matrix_lines_up_layers_across_trials(app_client: TestClient, job: dict[str, Any]) -> None:
    m = app_client.get(f"/api/v1/jobs/{job['id']}/density", params={"sort": "metrics.accuracy", "order": "desc"}, headers=auth(job["key"])).json()
    assert [t["number"] for t in m["trials"]] == [1, 2, 0]  # the pruned and queued trials reported no layers
    assert m["layers"] == ["fc0.weight", "fc1.weight", "out.weight"]
    assert m["density"] == [[0.5, 0.05, 0.1], [0.4, None, None], [0.6, 0.2, 0.5]]
    limited = app_client.get(f"/api/v1/jobs/{job['id']}/density", params={"limit": 1}, headers=auth(job["key"])).json()
    assert [t["number"] for t in limited["trials"]] == [0]


def test_histories_of_chosen_trials_of_that_job_only(app_client: TestClient, store: Store, job: dict[str, Any], make_spec: Any) -> None:
    other = store.create_job(make_spec(), "alice")
    foreign = finished(store, other.id, {"accuracy": 0.1}, epochs=[{"accuracy": 0.1}])
    response = app_client.get(
        f"/api/v1/jobs/{job['id']}/history", params={"trial": [job["trials"][0], foreign, job["trials"][1]]}, headers=auth(job["key"])
    )
    items = response.json()["items"]
    assert [i["trial_id"] for i in items] == [job["trials"][0], job["trials"][1]]
    assert [e["metrics"]["accuracy"] for e in items[0]["history"]] == [0.3, 0.5]
    assert items[1]["history"] == []
    too_many = {"trial": [f"t{i}" for i in range(21)]}
    assert app_client.get(f"/api/v1/jobs/{job['id']}/history", params=too_many, headers=auth(job["key"])).status_code == 422


def test_hypervolume_grows_as_the_front_improves(app_client: TestClient, job: dict[str, Any]) -> None:
    hv = app_client.get(f"/api/v1/jobs/{job['id']}/hypervolume", headers=auth(job["key"])).json()
    assert [o["metric"] for o in hv["objectives"]] == ["accuracy", "latency_ms"]
    values = [p["hypervolume"] for p in hv["items"]]
    assert hv["complete"] == 3
    assert [p["number"] for p in hv["items"]] == [0, 1, 2]  # each improved the front, in finishing order
    assert values == sorted(values) and values[-1] <= 1.0201


def test_hypervolume_history_matches_a_hand_computed_front() -> None:
    # minimised, scaled to [0, 1]: a = (0.5, 2) -> (1, 0.5); b = (0.9, 3) -> (0, 1); c = (0.7, 1) -> (0.5, 0);
    # d = (0.6, 2.5) is dominated by c and changes nothing
    rows = [
        SimpleNamespace(id=name, number=n, state="complete", parent_id=None, metrics={"accuracy": acc, "latency_ms": lat},
                        arch={}, created_at=None, started_at=None, finished_at=datetime.fromtimestamp(n + 1, timezone.utc), updated_at=None)
        for n, (name, acc, lat) in enumerate([("a", 0.5, 2.0), ("b", 0.9, 3.0), ("c", 0.7, 1.0), ("d", 0.6, 2.5)])
    ]
    objectives = [Objective(metric="accuracy", direction="maximize"), Objective(metric="latency_ms", direction="minimize")]
    complete, history = hypervolume_history(JobColumns.build(rows), objectives)
    r = 1.01
    box = lambda x, y: (r - x) * (r - y)  # noqa: E731  (the region a point dominates, up to the reference)
    a = box(1, 0.5)
    ab = a + box(0, 1) - box(1, 1)  # b adds a strip; the corner both cover counts once
    abc = box(0.5, 0) + box(0, 1) - box(0.5, 1)  # c dominates a: the front is {b, c}
    assert complete == 4
    assert [p.trial_id for p in history] == ["a", "b", "c", "d"]  # d closes the step chart
    assert [p.hypervolume for p in history] == pytest.approx([a, ab, abc, abc])


def test_lineage_lists_ancestors_and_children(app_client: TestClient, job: dict[str, Any]) -> None:
    child = app_client.get(f"/api/v1/trials/{job['trials'][3]}/lineage", headers=auth(job["key"])).json()
    assert [t["number"] for t in child["ancestors"]] == [1] and child["children"] == []
    parent = app_client.get(f"/api/v1/trials/{job['trials'][1]}/lineage", headers=auth(job["key"])).json()
    assert parent["ancestors"] == [] and [t["number"] for t in parent["children"]] == [3]


def test_jobs_overview_carries_the_best_trials_metrics(app_client: TestClient, job: dict[str, Any]) -> None:
    page = app_client.get("/api/v1/dashboard/jobs", headers=auth(job["key"])).json()
    (item,) = page["items"]
    assert item["best_trial"]["number"] == 1 and item["best_trial"]["metrics"]["accuracy"] == 0.9
    assert item["max_trials"] == 5 and item["n_trials"] == 5 and item["n_finished"] == 4
    single = app_client.get(f"/api/v1/dashboard/jobs/{job['id']}", headers=auth(job["key"])).json()
    assert single["best_trial"] == item["best_trial"]
    assert app_client.get("/api/v1/dashboard/jobs", params={"status": "succeeded"}, headers=auth(job["key"])).json()["items"] == []


def test_yaml_is_parsed_safely_or_refused_naming_the_problem(app_client: TestClient, store: Store) -> None:
    key = auth(store.create_api_key("alice"))
    ok = app_client.post("/api/v1/specs/parse", json={"yaml": "name: x\nbudget: {max_trials: 2}\n"}, headers=key)
    assert ok.status_code == 200 and ok.json()["spec"] == {"name": "x", "budget": {"max_trials": 2}}
    bad = app_client.post("/api/v1/specs/parse", json={"yaml": "name: [unclosed\n"}, headers=key)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "yaml"]
    assert "line" in bad.json()["detail"][0]["msg"]
    for text in ("- a list\n", "just text", "a: &x [1]\nb: *x\n", "!!python/object:os.system {}\n"):
        refused = app_client.post("/api/v1/specs/parse", json={"yaml": text}, headers=key)
        assert refused.status_code == 422, text


def test_sqlite_metrics_that_are_not_valid_json_do_not_break_the_table(
    app_client: TestClient, store: Store, job: dict[str, Any], backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("PostgreSQL's json type refuses NaN when it is written")
    with store.engine.begin() as connection:
        connection.execute(update(TrialRow).where(TrialRow.id == job["trials"][0]).values(metrics={"accuracy": math.nan}))
    page = table(app_client, job, sort="metrics.accuracy", order="desc", filter=["accuracy>0"])
    assert numbers(page) == [1, 2, 3]


def test_the_page_and_its_files_are_served_with_a_strict_policy(app_client: TestClient) -> None:
    page = app_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/dashboard/js/app.js">' in page.text
    script = app_client.get("/dashboard/js/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert app_client.get("/dashboard/js/app.js", headers={"If-None-Match": script.headers["etag"]}).status_code == 304
    zipped = app_client.get("/dashboard/js/pages/job.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.status_code == 200 and zipped.headers["content-encoding"] == "gzip"
    assert "unsafe" not in page.headers["content-security-policy"]
    for path in ("/dashboard/nope.js", "/dashboard/../app.py", "/dashboard/%2e%2e/routes/dashboard.py", "/dashboard/js"):
        assert app_client.get(path).status_code == 404, path


def test_finished_jobs_are_listed_with_their_status(app_client: TestClient, store: Store, job: dict[str, Any]) -> None:
    store.claim_job("runner", 60)
    store.finish_job(job["id"], JobStatus.succeeded)
    page = app_client.get("/api/v1/dashboard/jobs", params={"status": "succeeded"}, headers=auth(job["key"])).json()
    assert [j["id"] for j in page["items"]] == [job["id"]]

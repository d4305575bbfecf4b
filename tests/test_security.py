"""Per-owner limits, the authentication-failure rate limit, CORS, hostile bodies, and no unsafe loading."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import API_PREFIX, create_app
from api.limits import spec_problems
from nas.settings import Settings
from nas.specs import JobSpec
from nas.store import Store
from search_spaces.sparse_mlp import SparseMLP
from benchmarks.server_process import ServerProcess

SPEC: dict[str, Any] = {
    "name": "limits",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "training": {"epochs": 2},
    "budget": {"max_trials": 4},
}
ROOT = Path(__file__).resolve().parents[1]


def make_client(store: Store, tmp_path: Path, **settings: Any) -> TestClient:
    return TestClient(create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path, **settings)))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- per-owner limits ---------------------------------------------------------------------------


def test_max_params_is_the_largest_architecture() -> None:
    space = SparseMLP(SparseMLP.Params(min_depth=1, max_depth=2, width_choices=[4, 8]))
    # depth 2, both layers 8 wide, on 64 inputs and 10 classes
    assert space.max_params((1, 8, 8), 10) == (64 * 8 + 8) + (8 * 8 + 8) + (8 * 10 + 10)


@pytest.mark.parametrize(
    ("override", "field", "limits"),
    [
        ({"budget": {"max_trials": 11}}, ["budget", "max_trials"], {"limit_trials_per_job": 10}),
        ({"training": {"epochs": 30}}, ["training", "epochs"], {"limit_trial_epochs": 100}),
        ({"constraints": {"max_params": 10**9}}, ["constraints", "max_params"], {}),
        ({"search_space": {"name": "sparse_mlp", "params": {"width_choices": [4096], "max_depth": 4}}},
         ["search_space", "params"], {}),
    ],
)
def test_a_spec_over_a_limit_is_422_naming_the_field(
    store: Store, tmp_path: Path, override: dict[str, Any], field: list[str], limits: dict[str, int]
) -> None:
    key = store.create_api_key("alice", is_admin=True)  # admins are bound by the limits too
    with make_client(store, tmp_path, limit_params=1_000_000, **limits) as client:
        response = client.post(f"{API_PREFIX}/jobs", json={**SPEC, **override}, headers=bearer(key))
    assert response.status_code == 422, response.text
    assert [e["loc"][1:] for e in response.json()["detail"]] == [field]
    assert store.list_jobs() == ([], None)


def test_defaults_accept_the_readme_spec() -> None:
    assert spec_problems(JobSpec.model_validate(SPEC), Settings(home=Path("/nonexistent"))) == []


def test_too_many_active_jobs_is_429(store: Store, tmp_path: Path) -> None:
    alice, bob = store.create_api_key("alice"), store.create_api_key("bob")
    with make_client(store, tmp_path, limit_active_jobs=2) as client:
        ids = [client.post(f"{API_PREFIX}/jobs", json=SPEC, headers=bearer(alice)).json()["id"] for _ in range(2)]
        refused = client.post(f"{API_PREFIX}/jobs", json=SPEC, headers=bearer(alice))
        assert refused.status_code == 429
        assert "2 queued or running jobs" in refused.json()["detail"]
        assert client.post(f"{API_PREFIX}/jobs", json=SPEC, headers=bearer(bob)).status_code == 201  # per owner
        client.post(f"{API_PREFIX}/jobs/{ids[0]}/cancel", headers=bearer(alice))  # a finished job frees a slot
        assert client.post(f"{API_PREFIX}/jobs", json=SPEC, headers=bearer(alice)).status_code == 201


# -- authentication failures --------------------------------------------------------------------


def test_repeated_bad_keys_are_rate_limited(store: Store, tmp_path: Path) -> None:
    key = store.create_api_key("alice")
    with make_client(store, tmp_path, auth_failures_per_minute=3) as client:
        for _ in range(5):  # successes and missing keys do not count
            assert client.get(f"{API_PREFIX}/jobs", headers=bearer(key)).status_code == 200
            assert client.get(f"{API_PREFIX}/jobs").status_code == 401
        for _ in range(3):
            assert client.get(f"{API_PREFIX}/jobs", headers=bearer(key + "x")).status_code == 401
        blocked = client.get(f"{API_PREFIX}/jobs", headers=bearer(key + "x"))
        assert blocked.status_code == 429 and 1 <= int(blocked.headers["retry-after"]) <= 60
        # only wrong keys are refused: a right key from the same address still gets in
        assert client.get(f"{API_PREFIX}/jobs", headers=bearer(key)).status_code == 200
        assert client.get(f"{API_PREFIX}/jobs", headers=bearer(key + "y")).status_code == 429
        assert client.get(f"{API_PREFIX}/healthz").status_code == 200


# -- CORS ---------------------------------------------------------------------------------------


def test_cors_is_closed_by_default_and_opens_for_named_origins(store: Store, tmp_path: Path) -> None:
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "GET"}
    with make_client(store, tmp_path) as client:
        response = client.options(f"{API_PREFIX}/jobs", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with make_client(store, tmp_path, cors_origins=("https://ui.example",)) as client:
        response = client.options(f"{API_PREFIX}/jobs", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://ui.example"
        other = client.options(f"{API_PREFIX}/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("NAS_LIMIT_ACTIVE_JOBS", "3")
    settings = Settings.from_env()
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.limit_active_jobs == 3


# -- hostile bodies against the real server -----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    home = tmp_path_factory.mktemp("serve")
    process = ServerProcess(home, {"NAS_DATA_DIR": str(home)})
    key = process.create_key("alice")
    process.start("--max-jobs", "1")
    try:
        yield process, key
    finally:
        process.stop()


@pytest.mark.ray  # the server's dispatcher starts a local Ray
def test_hostile_bodies_are_refused_and_the_server_keeps_serving(server: tuple[ServerProcess, str]) -> None:
    process, key = server
    headers = {**bearer(key), "Content-Type": "application/json"}
    url = f"{process.url}{API_PREFIX}/jobs"

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 32768  # 2 MiB in all, with no Content-Length

    cases = {
        "declared oversize": (b"[" + b"0," * 600_000 + b"0]", 413),
        "chunked oversize": (chunks(), 413),
        "deep nesting": (b"[" * 10_000 + b"]" * 10_000, 422),
        "deep objects": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 422),
        "malformed": (b'{"name": "x", ', 422),
        "not an object": (b"[1, 2, 3]", 422),
    }
    with httpx.Client(timeout=60) as client:
        for name, (body, expected) in cases.items():
            response = client.post(url, content=body, headers=headers)
            assert response.status_code == expected, (name, response.text[:300])
            assert "detail" in response.json(), name
        assert client.get(url, headers=bearer(key)).status_code == 200
        assert client.post(url, json=SPEC, headers=bearer(key)).status_code == 201
    assert process.process is not None and process.process.poll() is None


# -- nothing stored or uploaded is loaded unsafely ----------------------------------------------

UNSAFE = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|marshal|shelve)\b", re.M), "imports a pickle-like module"),
    (re.compile(r"(?<![.\w])torch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"(?<![.\w])(eval|exec)\("), "eval/exec"),
    (re.compile(r"yaml\.load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
]


def test_no_code_loads_data_unsafely() -> None:
    sources = [p for folder in ("nas", "api", "workers", "search_spaces") for p in (ROOT / folder).rglob("*.py")]
    assert sources
    found = [f"{p.relative_to(ROOT)}: {why}" for p in sources for pattern, why in UNSAFE
             if pattern.search(p.read_text())]
    assert found == []


def test_artifact_paths_are_built_from_ids_only() -> None:
    text = (ROOT / "nas" / "store" / "artifacts.py").read_text()
    assert 'relative = Path(job_id) / f"{trial_id}.{fmt}"' in text
    assert "fmt" in text and re.search(r"def save_model\(artifact_dir: Path, job_id: str, trial_id: str", text)

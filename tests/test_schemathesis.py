"""schemathesis against the app's own OpenAPI document: no 5xx, and every response matches the schema.

Bounded (20 examples an operation, derandomized) so it stays a CI check, on a real SQLite store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from schemathesis.config import SchemathesisConfig

from api.app import API_PREFIX, create_app
from nas.settings import Settings
from nas.store import Store, make_engine, upgrade


@pytest.fixture
def api_schema(tmp_path: Path) -> schemathesis.BaseSchema:
    engine = make_engine(f"sqlite:///{tmp_path / 'nas.db'}")
    upgrade(engine)
    store = Store(engine)
    key = store.create_api_key("fuzzer")
    # limits high enough that generated specs are refused by validation, not by the failure limiter
    app = create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path, auth_failures_per_minute=10**6))
    app.state.fuzz_headers = {"Authorization": f"Bearer {key}"}
    # Starlette answers a wrong method per route, so the `Allow` header of a 405 lists only that
    # route's methods (GET and POST /jobs are two routes): a routing limit, not an API defect.
    # Cursors are opaque tokens; a made-up one is refused with 422 by design. A query parameter
    # a route does not take is refused with 422, as the document's schema implies.
    # Every default check runs. A schema-valid request may still be refused with 422 or 413 for a
    # reason no schema can state: a signed cursor the server never made, plug-ins that cannot run
    # together, dataset files that are missing, a budget the server sets (README, "Limits"); so
    # those two statuses count as accepting the data, besides schemathesis' default ones.
    config = SchemathesisConfig.from_str(
        "[phases.coverage]\nunexpected-methods = []\n"
        "[checks.positive_data_acceptance]\n"
        'expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "422", "429", "5xx"]\n'
        # a model upload's first check starts a worker process that imports PyTorch and onnxruntime
        '[[operations]]\ninclude-path = "/api/v1/models"\ninclude-method = "POST"\nrequest-timeout = 120\n'
    )
    return schemathesis.openapi.from_asgi(f"{API_PREFIX}/openapi.json", app, config=config)


# /readyz answers 503 by design here: this app has no dispatcher.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/api/v1/readyz")


@schema.parametrize()
@settings(max_examples=20, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    headers = case.operation.schema.app.state.fuzz_headers
    case.call_and_validate(headers=headers)

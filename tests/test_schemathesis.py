"""schemathesis with all its default checks and phases (examples, coverage, fuzzing, stateful) against a
live server on a socket, with a user key: no 5xx, every answer as documented, schema-valid requests
accepted and schema-invalid ones refused.

The run is bounded (a few examples an operation, one seed) so it stays a CI check. The exceptions
below are each a request the document cannot describe; everything else must pass.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sdk_server import Server, serve

# Operations not run, and why.
EXCLUDED = {
    "/api/v1/readyz": "503 by design: this server has no dispatcher beside it (tests/test_readiness.py)",
    "/api/v1/keys/{key_id}/revoke": "revoking the run's own key (GET /keys names it) would answer 401 to every "
    "later request (tests/test_keys_secrets.py covers revocation)",
}

# Schema-valid requests a route may still refuse with 422, each for a reason JSON Schema cannot state.
ACCEPTS_422 = {
    # A cursor is a token the server signed (nas.signing): a string of its documented shape that the
    # server never handed out is refused, which is its purpose.
    ("GET", "/api/v1/jobs"): "cursor",
    ("GET", "/api/v1/jobs/{job_id}/trials"): "cursor",
    ("GET", "/api/v1/dashboard/jobs"): "cursor",
    ("GET", "/api/v1/datasets"): "cursor",
    ("GET", "/api/v1/models"): "cursor",
    # Filter and sort names are the job's own metrics and architecture keys: an unknown one answers
    # 422 listing them.
    ("GET", "/api/v1/jobs/{job_id}/trials/table"): "filter and sort names",
    # Plug-ins that cannot run together (an N:M sparsifier on a layer with fewer input features than
    # M), a plug-in's params (checked by its own schema in GET /catalog), trial-epochs over the
    # server's limit (max_trials x epochs), dataset files the server lacks.
    ("POST", "/api/v1/jobs"): "plug-ins, params and limits that depend on one another",
    # Exactly one of architecture and layers; layers whose shapes do not chain (an RNN after a 1-d
    # input); an activation larger than the server's limit.
    ("POST", "/api/v1/latency/predict"): "a network that cannot be built",
    # The YAML must parse into a mapping.
    ("POST", "/api/v1/specs/parse"): "YAML that is not a job spec mapping",
    # Either the file or a server path, never both, and the file must be a dataset in its format.
    ("POST", "/api/v1/datasets"): "file contents",
    # The file must be an ONNX model the server can convert.
    ("POST", "/api/v1/models"): "file contents",
}


def _config() -> str:
    default = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' own
    lines = []
    for (method, path), _reason in ACCEPTS_422.items():
        statuses = ", ".join(f'"{s}"' for s in [*default, "422"])
        lines += [
            "[[operations]]", f'include-path = "{path}"', f'include-method = "{method}"',
            # uploads and predictions start a worker process that imports PyTorch and onnxruntime
            "request-timeout = 60",
            "[operations.checks.positive_data_acceptance]", f"expected-statuses = [{statuses}]", "",
        ]  # fmt: skip
    return "\n".join(lines)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    # failure limiter off: the run sends wrong keys on purpose (ignored_auth)
    server_gen = serve(tmp_path, auth_failures_per_minute=10**6)
    server = next(server_gen)
    try:
        yield server, server.store.create_api_key("fuzzer")
    finally:
        server_gen.close()


def test_api_conforms_to_its_schema(live: tuple[Server, str], tmp_path: Path) -> None:
    server, key = live
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config())
    excluded = [arg for path in EXCLUDED for arg in ("--exclude-path", path)]
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{server.url}/api/v1/openapi.json", "-H", f"Authorization: Bearer {key}",
        "--max-examples", "5", "--seed", "0", "--workers", "1", *excluded,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]

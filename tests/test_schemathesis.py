"""schemathesis with all its default checks and phases (examples, coverage, fuzzing, stateful) against a
live server on a socket, with a user key: no 5xx, every answer as documented, schema-valid requests
accepted and schema-invalid ones refused.

The run is bounded (a few examples an operation, one seed) so it stays a CI check. The operations
not run are named below; the schema-valid requests the server may still refuse, each for a reason
JSON Schema cannot state, are named in tests/schemathesis_hooks.py. Everything else must pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sdk_server import Server, serve

REPO = Path(__file__).resolve().parents[1]

# Operations not run, and why.
EXCLUDED = {
    "/api/v1/readyz": "503 by design: this server has no dispatcher beside it (tests/test_readiness.py)",
    "/api/v1/keys/{key_id}/revoke": "revoking the run's own key (GET /keys names it) would answer 401 to every "
    "later request (tests/test_keys_secrets.py covers revocation)",
}

# Uploads and predictions start a worker process that imports PyTorch and onnxruntime on first use.
SLOW = ("/api/v1/datasets", "/api/v1/models", "/api/v1/latency/predict")


def _config() -> str:
    return "\n".join(f'[[operations]]\ninclude-path = "{path}"\nrequest-timeout = 60\n' for path in SLOW)


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
        # replaced by the same check with the named exceptions (tests/schemathesis_hooks.py)
        "--exclude-checks", "positive_data_acceptance",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]

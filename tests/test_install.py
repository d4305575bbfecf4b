"""The light client install: ``pip install sparse-nas`` in a fresh virtual environment.

It must pull none of the server's dependencies (torch, Ray, LightGBM, ONNX, ...: the ``server``
extra), and its SDK and CLI must still submit a job to a real ``nas serve`` (run from the full
install that runs these tests) and read the job's trials. Building the environment downloads
the client's dependencies from the package index, once per test session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.server_process import ServerProcess

pytestmark = [pytest.mark.install, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    "name": "light-client",
    "search_space": {"name": "sparse_mlp", "params": {"max_depth": 1, "width_choices": [32]}},
    "dataset": {"name": "digits"},
    "training": {"epochs": 1, "batch_size": 64},
    "budget": {"max_trials": 2, "max_concurrent": 2},
}

# Run by the light environment's Python: submit, wait, and print the trials as JSON.
SDK_SCRIPT = """
import json, sys
from nas.client import Client

spec = json.loads(sys.argv[1])
with Client() as client:
    job = client.submit(spec)
    client.wait(job.id, progress=False, timeout=600)
    trials = [t.model_dump(mode="json") for t in client.trials(job.id)]
heavy = sorted(m for m in ("torch", "ray", "numpy", "sqlalchemy") if m in sys.modules)
print(json.dumps({"job_id": job.id, "trials": trials, "heavy_modules": heavy}))
"""


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def server_packages() -> set[str]:
    """The distributions the ``server`` extra names in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_requirement_name(r) for r in project["optional-dependencies"]["server"]}


@pytest.fixture(scope="session")
def light_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment without system site-packages, with ``pip install <checkout>``."""
    root = tmp_path_factory.mktemp("light-client")
    # a copy of the project, so the build's own folders (build/, *.egg-info) stay out of the checkout
    source = root / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "benchmarks"))
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    pip = subprocess.run([env_dir / "bin" / "python", "-m", "pip", "install", "--quiet", str(source)],
                         capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return env_dir


def installed(env_dir: Path) -> set[str]:
    listing = subprocess.run([env_dir / "bin" / "python", "-m", "pip", "list", "--format=json"],
                             capture_output=True, text=True, check=True)
    return {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}


def test_light_install_has_no_server_dependencies(light_env: Path) -> None:
    packages = installed(light_env)
    assert "sparse-nas" in packages
    assert {"torch", "ray", "lightgbm", "onnx"} <= server_packages()
    assert packages.isdisjoint(server_packages()), packages & server_packages()


def test_light_cli_names_the_server_extra(light_env: Path) -> None:
    result = subprocess.run([light_env / "bin" / "nas", "serve", "--demo"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'sparse-nas[server]'" in result.stderr


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """The real ``nas serve`` of the full install (this interpreter's environment)."""
    bin_dir = str(Path(sys.executable).parent)
    process = ServerProcess(tmp_path, {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    process.start()
    yield process
    process.stop()


def test_light_client_submits_and_reads_trials(light_env: Path, server: ServerProcess) -> None:
    key = server.create_key("light")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""),
           "NAS_URL": server.url, "NAS_API_KEY": key}
    sdk = subprocess.run([light_env / "bin" / "python", "-c", SDK_SCRIPT, json.dumps(SPEC)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert sdk.returncode == 0, sdk.stderr + server.log()[-3000:]
    answer = json.loads(sdk.stdout)
    assert answer["heavy_modules"] == []
    trials = answer["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    assert [(t["state"], t["error"]) for t in trials] == [("complete", None)] * 2
    assert all(0 < t["metrics"]["accuracy"] <= 1 for t in trials)

    jobs = subprocess.run([light_env / "bin" / "nas", "jobs", "--json"], env=env, capture_output=True, text=True)
    assert jobs.returncode == 0, jobs.stderr
    assert [(j["id"], j["status"]) for j in json.loads(jobs.stdout)] == [(answer["job_id"], "succeeded")]
    listed = subprocess.run([light_env / "bin" / "nas", "trials", answer["job_id"], "--json"],
                            env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert sorted(t["id"] for t in json.loads(listed.stdout)) == sorted(t["id"] for t in trials)

"""The example third-party package (``examples/nas-plugin-example``) adds a search space through an entry point.

It is installed with pip into a folder of its own (``--target``) that the processes using it get
on ``PYTHONPATH``, as a server and its Ray workers would have it installed: the test's own
environment stays untouched, so tests running beside it (and their registries, read once per
process) never see the space, and a failed run leaves nothing to uninstall. The package then goes
through the contract suite like any installed plug-in, and a real ``nas serve`` lists it in its
catalog and runs a job on it to the end, its trials built on the Ray workers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nas.client import Client
from nas.specs import JobStatus
from benchmarks.server_process import ServerProcess

pytestmark = pytest.mark.ray

PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "nas-plugin-example"
SPACE = "residual_mlp"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the example package is pip-installed into, for ``PYTHONPATH``.

    Built from a copy of the package, so the build's files stay out of the checkout, and without
    build isolation or dependencies: the environment already has setuptools and sparse-nas, and no
    package index is needed.
    """
    source = tmp_path_factory.mktemp("plugin-source") / PACKAGE.name
    shutil.copytree(PACKAGE, source)
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True,
    )
    return target


def with_plugin(plugin_path: Path) -> dict[str, str]:
    """Environment variables that put the installed package on a process's import path."""
    paths = [str(plugin_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture
def server(plugin_path: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, with_plugin(plugin_path))
    yield server
    server.stop()


def test_the_test_environment_does_not_have_the_plugin() -> None:
    from nas import registry

    assert SPACE not in registry.search_spaces.names()


def test_the_installed_plugin_passes_the_contract_suite(plugin_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_contracts.py",
         "-k", SPACE],
        cwd=PACKAGE.parents[1], env={**os.environ, **with_plugin(plugin_path)}, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-1000:]


def test_a_server_lists_the_plugin_space_and_runs_a_job_on_it(server: ServerProcess) -> None:
    key = server.create_key("alice")
    server.start()
    with Client(server.url, key) as client:
        spaces = {entry["name"]: entry for entry in client.catalog()["search_spaces"]}
        assert SPACE in spaces, sorted(spaces)
        assert spaces[SPACE]["description"].startswith("Residual MLPs")
        assert set(spaces[SPACE]["params_schema"]["properties"]) >= {"max_blocks", "width_choices"}

        job = client.submit({
            "name": "plug-in space",
            "search_space": {"name": SPACE, "params": {"max_blocks": 1, "width_choices": [64],
                                                      "sparsity_choices": [0.5, 0.8]}},
            "strategy": {"name": "tpe"},
            "dataset": {"name": "digits"},
            "sparsifier": {"name": "magnitude"},
            "training": {"epochs": 4, "batch_size": 32, "lr": 0.003},
            "budget": {"max_trials": 2, "max_concurrent": 1},
            "seed": 0,
        })
        job = client.wait(job.id, progress=False, poll_s=1, timeout=600)
        assert job.status is JobStatus.succeeded, (job.error, server.log()[-3000:])
        trials = [client.trial(trial.id) for trial in client.trials(job.id)]
        assert len(trials) == 2
        for trial in trials:
            # the worker built the space's network and pruned each layer to the sparsity its arch chose
            density = {layer.name: layer.density for layer in trial.layers}
            assert density["stem.weight"] == pytest.approx(1 - trial.arch["sparsity_stem"], abs=0.01), density
            assert density["out.weight"] == pytest.approx(1 - trial.arch["sparsity_out"], abs=0.01), density
        best = client.trial(job.best_trial_id)
        assert best.metrics["accuracy"] > 0.55, best.metrics  # chance is 0.1

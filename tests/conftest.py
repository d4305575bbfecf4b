"""Shared fixtures."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# the store fixtures (sqlite and postgresql backends): store, engine, engine_url, make_spec;
# the SDK's in-thread server and model fixtures
pytest_plugins = ["tests.fixtures_store", "tests.sdk_fixtures"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The datasets folder: ``NAS_DATA_DIR``, else the ``shared/data`` folder beside the checkout."""
    path = Path(os.environ.get("NAS_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (path / "mnist").is_dir():
        message = f"no MNIST at {path / 'mnist'}; set NAS_DATA_DIR to a folder that holds mnist/"
        if os.environ.get("CI"):  # in CI the data must be there: a skip would hide missing checks
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def torch_single_thread():
    """Run torch on one thread, as trial workers do: small models are slower, and erratic, with more."""
    import torch  # here, not at the top: tests that check what importing `nas` pulls in stay unaffected

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _latency_observations_from_files() -> Iterator[None]:
    """A service object (an app, a job runner) points the process's latency predictions at its
    database; the next test starts from the files under NAS_HOME again."""
    yield
    if "nas.latency.store" in sys.modules:
        sys.modules["nas.latency.store"].use_observations(None)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group into the test id
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray share one xdist group, so they run one at a time in one worker."""
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.xdist_group("ray"))

"""Fixtures for the SDK, CLI and export tests: the real app on a socket, an owner, a key.

Loaded as a plugin (``pytest_plugins = ["tests.sdk_fixtures"]``); the helpers live in
:mod:`tests.sdk_server`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.sdk_server import Server, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per test module; tests isolate themselves by owner."""
    yield from serve(tmp_path_factory.mktemp("sdk-server"))


@pytest.fixture
def owner() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def key(server: Server, owner: str) -> str:
    server.faults.arm(0)
    return server.store.create_api_key(owner)

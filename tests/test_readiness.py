"""Readiness from the dispatchers' heartbeats in the database, on every backend.

The API never talks to Ray: a dispatcher records a heartbeat with its Ray's state, and
``GET /readyz`` reads it. ``nas serve`` follows its own dispatcher; an API without one is ready
while any dispatcher serves its database. The real processes are in tests/test_lifecycle_process.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import API_PREFIX, create_app
from nas.settings import Settings
from nas.store import Store
from nas.store.store import DISPATCHER_STALE_S
from nas.store.tables import DispatcherRow, utcnow


def _silence(store: Store, runner_id: str) -> None:
    """Date a dispatcher's last heartbeat back past the staleness bound, as a crash would leave it."""
    with store.engine.begin() as connection:
        connection.execute(
            update(DispatcherRow)
            .where(DispatcherRow.id == runner_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=DISPATCHER_STALE_S + 1))
        )


def _readyz(store: Store, tmp_path: Path, dispatcher_id: str | None) -> tuple[int, dict[str, bool]]:
    app = create_app(store, Settings(home=tmp_path / "home", data_dir=tmp_path, dispatcher_id=dispatcher_id))
    with TestClient(app) as client:
        response = client.get(f"{API_PREFIX}/readyz")  # no key: probes carry none
    return response.status_code, response.json()


def test_heartbeats_are_live_until_silent_or_removed(store: Store) -> None:
    store.dispatcher_heartbeat("a", ray_up=True)
    store.dispatcher_heartbeat("b", ray_up=True)
    store.dispatcher_heartbeat("b", ray_up=False)
    assert store.live_dispatchers() == {"a": True, "b": False}
    _silence(store, "a")
    assert store.live_dispatchers() == {"b": False}
    store.dispatcher_heartbeat("a", ray_up=True)  # a beat revives it
    store.remove_dispatcher("b")
    store.remove_dispatcher("b")  # idempotent, as retries need
    assert store.live_dispatchers() == {"a": True}


def test_serve_is_ready_only_while_its_own_dispatcher_beats_with_ray_up(store: Store, tmp_path: Path) -> None:
    assert _readyz(store, tmp_path, "mine") == (
        503, {"ready": False, "database": True, "dispatcher": False, "ray": False}
    )
    store.dispatcher_heartbeat("other", ray_up=True)  # another server's dispatcher is not ours
    assert _readyz(store, tmp_path, "mine")[0] == 503
    store.dispatcher_heartbeat("mine", ray_up=False)
    assert _readyz(store, tmp_path, "mine") == (503, {"ready": False, "database": True, "dispatcher": True, "ray": False})
    store.dispatcher_heartbeat("mine", ray_up=True)
    assert _readyz(store, tmp_path, "mine") == (200, {"ready": True, "database": True, "dispatcher": True, "ray": True})
    _silence(store, "mine")
    assert _readyz(store, tmp_path, "mine") == (503, {"ready": False, "database": True, "dispatcher": False, "ray": False})


def test_an_api_without_a_dispatcher_is_ready_while_any_dispatcher_has_ray_up(store: Store, tmp_path: Path) -> None:
    assert _readyz(store, tmp_path, None)[0] == 503
    store.dispatcher_heartbeat("x", ray_up=False)
    assert _readyz(store, tmp_path, None) == (503, {"ready": False, "database": True, "dispatcher": True, "ray": False})
    store.dispatcher_heartbeat("y", ray_up=True)
    assert _readyz(store, tmp_path, None) == (200, {"ready": True, "database": True, "dispatcher": True, "ray": True})

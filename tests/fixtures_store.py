"""Store fixtures over real databases: a SQLite file and a real PostgreSQL server.

``store`` (and ``engine``, ``engine_url``) are parametrized over two backends:

* ``sqlite``: a fresh, migrated database file under the test's ``tmp_path``;
* ``postgresql``: one uniquely named database per test session, created through the
  ``postgres`` maintenance database at 127.0.0.1:5432 (override with ``NAS_TEST_PG_ADMIN_URL``),
  migrated once with :func:`nas.store.upgrade`, its tables truncated before every test and the
  database dropped at the end of the session.

When PostgreSQL cannot be reached the ``postgresql`` parameter fails if the ``CI`` environment
variable is set, and is skipped with the reason otherwise. Its tests carry ``pytest.mark.postgres``
(``-m "not postgres"`` deselects them).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from nas.specs import JobSpec
from nas.store import Store, make_engine, upgrade
from nas.store.tables import Base

PG_ADMIN_URL = os.environ.get("NAS_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Every table the schema defines, so a new one is emptied between tests without being listed here.
TABLES = tuple(table.name for table in Base.metadata.sorted_tables)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _pg_unavailable(reason: str) -> None:
    message = (
        f"PostgreSQL is unreachable at {PG_ADMIN_URL} ({reason}); start it with "
        "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
    )
    if os.environ.get("CI"):
        pytest.fail(message + " -- required because CI is set", pytrace=False)
    pytest.skip(message)


def _admin_connect() -> Any:
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, migrated to head; dropped at the end."""
    import psycopg

    try:
        admin = _admin_connect()
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    name = f"nas_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    host_part = PG_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql+psycopg://{host_part}/{name}"
    try:
        yield url
    finally:
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_engine(pg_database_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; each test gets a copy (cheaper than migrating)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    assert not path.with_name("template.db-wal").exists()
    return path


def _truncate(engine: Engine) -> None:
    with engine.begin() as connection:
        # A test that leaked an open transaction would otherwise hang the next one here.
        connection.execute(text("SET LOCAL lock_timeout = '20s'"))
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def engine(backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """A migrated, empty database on the backend under test."""
    if backend == "sqlite":
        path = tmp_path / "nas.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        eng = make_engine(f"sqlite:///{path}")
        upgrade(eng)  # a no-op at head; kept so the fixture never hands out an old schema
        yield eng
        eng.dispose()
    else:
        eng = request.getfixturevalue("pg_engine")
        _truncate(eng)
        yield eng


@pytest.fixture
def engine_url(engine: Engine) -> str:
    """The URL of ``engine``'s (migrated, empty) database, for code that makes its own engine."""
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


SPEC: dict[str, Any] = {
    "name": "test-search",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "budget": {"max_trials": 5},
}


@pytest.fixture
def make_spec() -> Any:
    """``make_spec(**overrides)``: a valid digits/sparse_mlp JobSpec with top-level overrides."""

    def make(**overrides: Any) -> JobSpec:
        return JobSpec.model_validate({**SPEC, **overrides})

    return make


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables yet, on the backend under test (for ``nas db upgrade``)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty' / 'nas.db'}"
        return
    session_url: str = request.getfixturevalue("pg_database_url")
    base, session_name = session_url.rsplit("/", 1)
    name = f"{session_name}_e{uuid.uuid4().hex[:6]}"
    with _admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

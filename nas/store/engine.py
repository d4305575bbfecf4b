"""Engines for SQLite (the embedded default) and PostgreSQL, and the migration runner."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"


class _AlembicSetupAtDebug(logging.Filter):
    """Alembic's set-up lines (plug-ins loaded, the dialect, DDL transactionality) at DEBUG, so
    that at INFO a start only reports the migrations it applies."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "alembic.runtime.plugins" or record.getMessage().startswith(("Context impl", "Will assume")):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_ALEMBIC_SETUP_AT_DEBUG = _AlembicSetupAtDebug()


def _private_database_file(path: Path) -> None:
    """The SQLite file (created empty if missing) and its WAL and shared-memory files: mode 0600.

    SQLite creates ``-wal`` and ``-shm`` with the database file's mode, so a database created
    here keeps them private too; an older, wider file is narrowed.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # O_EXCL: an existing file is never opened here. Closing any descriptor of a database file
    # drops every POSIX lock this process holds on it, SQLite connections' locks included.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and file.stat().st_uid == os.getuid():
            file.chmod(0o600)


def make_engine(url: str) -> Engine:
    """An engine that is safe with the API and the dispatcher writing at once.

    SQLite gets WAL (readers never wait for the writer), a busy timeout, foreign keys, and
    ``BEGIN IMMEDIATE`` for writing transactions (``execution_options(sqlite_immediate=True)``)
    so two writers queue up instead of failing to upgrade a read lock.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # No pre-ping: it costs a round trip on every checkout (a sixth of a busy runner's time), and a
        # pooled connection the server dropped fails at its first statement, before anything is
        # committed, which nas.store.retry sees as invalidated and runs again on a fresh connection.
        return create_engine(url, pool_size=10, max_overflow=20)

    if parsed.database and parsed.database != ":memory:":
        _private_database_file(Path(parsed.database))
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations shipped in the package (``nas db upgrade``)."""
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration"):  # before importing alembic
        logging.getLogger(name).addFilter(_ALEMBIC_SETUP_AT_DEBUG)
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()

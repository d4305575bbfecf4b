"""Persistence: tables, migrations and the :class:`Store` repository."""

from nas.store.engine import make_engine, upgrade
from nas.store.store import ApiKey, Artifact, Principal, Store

__all__ = ["ApiKey", "Artifact", "Principal", "Store", "make_engine", "upgrade"]

"""Persistence: tables, migrations and the :class:`Store` repository."""

from nas.store.engine import make_engine, upgrade
from nas.store.store import Artifact, Principal, Store

__all__ = ["Artifact", "Principal", "Store", "make_engine", "upgrade"]

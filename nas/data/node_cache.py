"""Stored datasets on a worker node: one canonical file per dataset, in the node's own cache folder.

A trial never reads a file only the API machine has. An uploaded dataset's canonical bytes come
through Ray's object store (:mod:`workers.datasets`); a dataset registered by path is read by the
worker node itself, from under its own ``NAS_DATA_ROOTS``. Either way the node writes the canonical
file once, as ``Settings.dataset_cache_dir/<id>.npz``, and every trial on it reads that file
through :class:`NodeDatasetCatalog`. Ids are never reused and a stored dataset never changes, so a
file once written and checked stays right; each process checks it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas.data.stored import ID_PATTERN, DatasetCatalog, UnknownDataset, read_meta, write_splits

_CHUNK = 1 << 20
# Files this process has checked, with the stat they had then: a trial's second run skips the hash.
_checked: set[tuple[str, str, int, int]] = set()


class NodeDatasetCatalog(DatasetCatalog):
    """The datasets this node holds in ``cache_dir``: shape and arrays from the cached canonical file."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def shape(self, dataset_id: str) -> tuple[tuple[int, ...], int]:
        import numpy as np

        with np.load(self.splits_path(dataset_id), allow_pickle=False) as npz:
            return tuple(int(s) for s in npz["input_shape"]), int(npz["num_classes"])

    def splits_path(self, dataset_id: str) -> Path:
        path = cache_path(self.cache_dir, dataset_id)
        if not path.is_file():
            raise UnknownDataset(f"dataset {dataset_id} is not in this node's cache ({self.cache_dir})")
        return path


def cache_path(cache_dir: Path, dataset_id: str) -> Path:
    """Where the node keeps a dataset; built from a checked id only, never from user text."""
    if not re.fullmatch(ID_PATTERN, dataset_id):
        raise ValueError(f"not a dataset id: {dataset_id!r}")
    return cache_dir / f"{dataset_id}.npz"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_bytes(cache_dir: Path, dataset_id: str, sha256: str, fetch: Callable[[], Any]) -> Path:
    """The cached canonical file of an uploaded dataset whose bytes hash to ``sha256`` (:func:`cache_delivered`)."""
    return cache_delivered(cache_path(cache_dir, dataset_id), f"dataset {dataset_id}", sha256, fetch)


def cache_delivered(path: Path, what: str, sha256: str, fetch: Callable[[], Any]) -> Path:
    """``path`` holding the bytes of ``what`` (a stored resource) that hash to ``sha256``.

    ``fetch()`` returns those bytes (any buffer) and is called only when the node lacks them, once
    per node however many trials start together; bytes that hash otherwise are refused.
    """

    def valid(path: Path) -> bool:
        return sha256_of(path) == sha256

    def write(path: Path) -> None:
        data = memoryview(fetch()).cast("B")
        received = hashlib.sha256(data).hexdigest()
        if received != sha256:
            raise ValueError(f"{what} arrived damaged: sha256 {received}, expected {sha256}")
        write_atomically(path, data)

    return cached_file(path, sha256, valid, write)


def cache_source(cache_dir: Path, dataset_id: str, sha256: str, read: Callable[[], Any]) -> Path:
    """The cached canonical file of a dataset registered by path, whose source file hashes to ``sha256``.

    ``read()`` returns the source's :class:`~nas.data.base.DataSplits` (it checks the source) and is
    called only when the node lacks them; the file records ``sha256`` as its source's.
    """

    def valid(path: Path) -> bool:
        return read_meta(path).get("source_sha256") == sha256

    def write(path: Path) -> None:
        write_splits(path, read(), {"source_sha256": sha256})

    return cached_file(cache_path(cache_dir, dataset_id), sha256, valid, write)


def cached_file(path: Path, key: str, valid: Callable[[Path], bool], write: Callable[[Path], None]) -> Path:
    """``path`` once it holds what ``key`` names: ``write(path)`` runs only when it is missing or not
    ``valid``, under a lock that makes trials starting together on one node wait for one writer;
    each process checks a file once (by its stat) for each key."""
    if _known(path, key):
        return path
    with _node_lock(path):  # trials starting together on one node: one fetches, the others wait for it
        if not (path.is_file() and valid(path)):
            write(path)
        stat = path.stat()
        _checked.add((str(path), key, stat.st_mtime_ns, stat.st_size))
    return path


def _known(path: Path, key: str) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return (str(path), key, stat.st_mtime_ns, stat.st_size) in _checked


@contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_atomically(path: Path, data: memoryview) -> None:
    """Write ``data`` to ``path`` (mode 0600) through a temporary file, so no reader sees half of it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)

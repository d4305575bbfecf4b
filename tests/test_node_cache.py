"""A worker node's cache of stored datasets: written once, atomically, checked, and read by trials."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from nas.data import DataSplits
from nas.data.node_cache import NodeDatasetCatalog, cache_bytes, cache_path, cache_source, sha256_of
from nas.data.stored import UnknownDataset, read_meta, scoped_catalog, write_splits
from nas.training import load_dataset


def _splits(seed: int = 0) -> DataSplits:
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((30, 3, 4, 4), dtype=np.float32), np.arange(30, dtype=np.int64) % 2
    return DataSplits(x[:20], y[:20], x[20:], y[20:], (3, 4, 4), 2)


@pytest.fixture
def canonical(tmp_path: Path) -> bytes:
    """A stored dataset's canonical file, as the server keeps it."""
    path = tmp_path / "server" / "data.npz"
    write_splits(path, _splits())
    return path.read_bytes()


def test_a_dataset_is_fetched_once_per_node_and_read_through_the_node_catalog(tmp_path: Path, canonical: bytes) -> None:
    cache_dir, dataset_id = tmp_path / "node", uuid.uuid4().hex
    fetched: list[int] = []

    def fetch() -> bytes:
        fetched.append(1)
        return canonical

    digest = hashlib.sha256(canonical).hexdigest()
    threads = [threading.Thread(target=cache_bytes, args=(cache_dir, dataset_id, digest, fetch)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fetched == [1]  # trials starting together on a node: one fetch
    path = cache_path(cache_dir, dataset_id)
    assert path.read_bytes() == canonical and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in cache_dir.iterdir()) == [path.name, path.name + ".lock"]  # no temp file left

    with scoped_catalog(NodeDatasetCatalog(cache_dir)):
        from nas import registry

        dataset = registry.datasets.create("upload", {"id": dataset_id})
        assert dataset.shape() == ((3, 4, 4), 2)
        splits = load_dataset("upload", {"id": dataset_id}, tmp_path / "unused")
        assert np.array_equal(splits.x_test, _splits().x_test)
        with pytest.raises(UnknownDataset, match="not in this node's cache"):
            registry.datasets.create("upload", {"id": uuid.uuid4().hex}).shape()


def test_damaged_bytes_are_refused_and_a_damaged_cache_file_is_fetched_again(tmp_path: Path, canonical: bytes) -> None:
    cache_dir, dataset_id = tmp_path / "node", uuid.uuid4().hex
    digest = hashlib.sha256(canonical).hexdigest()
    with pytest.raises(ValueError, match=f"dataset {dataset_id} arrived damaged"):
        cache_bytes(cache_dir, dataset_id, digest, lambda: canonical[:-1] + b"?")
    assert not cache_path(cache_dir, dataset_id).exists()

    path = cache_bytes(cache_dir, dataset_id, digest, lambda: canonical)
    path.write_bytes(canonical[:100])  # a disk fault, or a hand edit: the file no longer hashes right
    assert cache_bytes(cache_dir, dataset_id, digest, lambda: canonical).read_bytes() == canonical


def test_a_dataset_read_from_its_source_records_the_sources_hash(tmp_path: Path) -> None:
    cache_dir, dataset_id = tmp_path / "node", uuid.uuid4().hex
    reads: list[int] = []

    def read() -> DataSplits:
        reads.append(1)
        return _splits()

    path = cache_source(cache_dir, dataset_id, "a" * 64, read)
    assert cache_source(cache_dir, dataset_id, "a" * 64, read) == path and reads == [1]
    assert read_meta(path) == {"source_sha256": "a" * 64}
    assert NodeDatasetCatalog(cache_dir).shape(dataset_id) == ((3, 4, 4), 2)
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_paths_are_built_from_ids_only(tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "A" * 32, "0" * 31, "0" * 32 + "\n"):
        with pytest.raises(ValueError, match="not a dataset id"):
            cache_path(tmp_path, bad)

"""How a job's stored dataset reaches the nodes its trials run on: through Ray, never a path on the API machine.

An uploaded dataset: the runner reads its canonical file once per job and puts the bytes in Ray's
object store, held until the job ends (:func:`deliver`, :mod:`workers.object_source`). A trial
whose node lacks the file fetches the object and writes the node's cache (:func:`receive`).

A dataset registered by path: each node reads the source itself, from under its own
``NAS_DATA_ROOTS``, with the recorded format, options and split seed, after checking that the
file is the one registered (its sha256); a file changed since fails the trial, saying so.

Either way every trial on a node then reads the one cached canonical file
(:class:`~nas.data.node_cache.NodeDatasetCatalog`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas.data.base import DataSplits
from nas.data.node_cache import NodeDatasetCatalog, cache_bytes, cache_source, sha256_of
from nas.data.stored import use_catalog
from nas.settings import Settings
from nas.specs import JobSpec
from nas.store import Store
from nas.store.artifacts import dataset_folder
from workers.object_source import fetch, object_source

STORED = "upload"  # the dataset plug-in of stored datasets


@contextmanager
def deliver(store: Store, settings: Settings, job_id: str, spec: JobSpec) -> Iterator[dict[str, Any] | None]:
    """What every trial of the job needs to find its dataset (``None`` for a built-in one), for the
    ``with`` block: an uploaded dataset's bytes stay in Ray's object store until it ends."""
    if spec.dataset.name != STORED:
        yield None
        return
    dataset_id = spec.dataset.params["id"]
    record = store.get_dataset(dataset_id)
    if record.source == "path":
        yield {"id": dataset_id, "path": record.path, "sha256": record.sha256, "format": record.format,
               "options": record.options.model_dump(mode="json"),
               "registered": [record.input_shape, record.num_classes, record.n_train, record.n_test]}  # fmt: skip
        return
    import numpy as np

    from nas.data.ingest.folder import DATA_FILE

    path = dataset_folder(settings.artifact_dir, dataset_id) / DATA_FILE
    # A plain array over the mapped file: the object store copies it page by page (never whole in
    # this process's memory) and trials read it zero-copy from their node's shared memory.
    canonical = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
    sha256 = hashlib.sha256(canonical).hexdigest()
    with object_source(f"nas-dataset-{job_id}", canonical) as name:
        del canonical
        yield {"id": dataset_id, "sha256": sha256, "source": name}


def receive(delivery: dict[str, Any] | None) -> None:
    """Make this process find the job's dataset in its node's cache, filling the cache if the node lacks it."""
    if delivery is None:
        return
    settings = Settings.from_env()
    cache_dir = settings.dataset_cache_dir
    dataset_id = delivery["id"]
    if "source" in delivery:
        cache_bytes(cache_dir, dataset_id, delivery["sha256"], lambda: fetch(delivery["source"]))
    else:
        cache_source(cache_dir, dataset_id, delivery["sha256"], lambda: _read_source(delivery, settings))
    use_catalog(NodeDatasetCatalog(cache_dir))


def _read_source(delivery: dict[str, Any], settings: Settings) -> DataSplits:
    """The splits of a dataset registered by path, read here as they were at registration."""
    from nas.data.ingest import DatasetRejected, IngestLimits, IngestOptions, ingest
    from nas.data.roots import resolve_under_roots

    dataset_id, recorded = delivery["id"], delivery["sha256"]
    if not settings.data_roots:
        raise ValueError(f"dataset {dataset_id} is read from {delivery['path']}, but this node has no NAS_DATA_ROOTS")
    try:
        source = resolve_under_roots(delivery["path"], settings.data_roots)
    except DatasetRejected as exc:
        raise ValueError(f"dataset {dataset_id} on this node: {exc.message}") from None

    def check() -> None:
        actual = sha256_of(source)
        if actual != recorded:
            raise ValueError(
                f"dataset {dataset_id}: {source} is not the file registered (sha256 {actual}, registered {recorded}); "
                "it changed since, so register it again as a new dataset"
            )

    check()
    options = IngestOptions(format=delivery["format"], **delivery["options"])
    splits = ingest(Path(source), options, IngestLimits.from_settings(settings)).splits
    check()  # not changed while it was read
    read = [list(splits.input_shape), splits.num_classes, len(splits.y_train), len(splits.y_test)]
    if read != delivery["registered"]:
        raise ValueError(
            f"dataset {dataset_id}: this node read {source} as (input shape, classes, train, test) {read}, "
            f"not {delivery['registered']} as registered; its ingest differs from the server's"
        )
    return splits

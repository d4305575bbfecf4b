"""Datasets users store with the service (uploaded, or registered by path): where a process finds them.

A job names one as ``dataset: {name: upload, params: {id: ...}}`` (:mod:`nas.data.upload`).
Planning the job (validating it at submission, the runner's feasibility checks) needs only its
shape, which the store holds; a trial needs its arrays, which a worker reads from its own node's
cache, filled from Ray's object store, never from the API machine's disk. Each process therefore
says where stored datasets are found by installing a :class:`DatasetCatalog`: the API for each
request (scoped to the caller's datasets, so another owner's dataset is unknown, exactly as an
unknown id is), the runner and the workers once per process.

The arrays of a stored dataset live in one canonical file, :func:`write_splits`'s uncompressed
``.npz`` of plain numeric arrays, read back without pickle by :func:`read_splits`.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

from nas.data.base import DataSplits
from nas.installed import STORE_ID_PATTERN as ID_PATTERN
from nas.installed import Installed
SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


class UnknownDataset(LookupError):
    """No stored dataset of that id is known here (never stored, deleted, or another owner's)."""


class DatasetCatalog(ABC):
    """Where this process finds stored datasets."""

    @abstractmethod
    def shape(self, dataset_id: str) -> tuple[tuple[int, ...], int]:
        """``(input_shape, num_classes)``; raises :class:`UnknownDataset`."""

    def full_id(self, dataset_id: str) -> str:
        """The whole id of the dataset ``dataset_id`` names (an id, or a unique prefix where the catalog
        can tell); raises :class:`UnknownDataset`, or ``ValueError`` for an ambiguous prefix."""
        return dataset_id

    def splits_path(self, dataset_id: str) -> Path:
        """The canonical file of the dataset's splits on this machine; raises :class:`UnknownDataset`.

        Only a worker's catalog has the arrays: planning processes know shapes alone.
        """
        raise UnknownDataset(f"dataset {dataset_id}'s arrays are not on this machine")


_catalogs: Installed[DatasetCatalog] = Installed(
    "nas_dataset_catalog", lambda: UnknownDataset("this process knows no stored datasets (no catalog installed)")
)
use_catalog = _catalogs.use
scope_catalog = _catalogs.scope
scoped_catalog = _catalogs.scoped
current_catalog = _catalogs.current


def write_splits(path: Path, splits: DataSplits, meta: dict[str, object] | None = None) -> None:
    """Write ``splits`` as the canonical file, atomically (temp file, then rename), mode 0600.

    ``meta`` (JSON-able: class names, normalisation) travels with the arrays as a JSON string.
    """
    import numpy as np

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        np.savez(
            handle,
            x_train=np.ascontiguousarray(splits.x_train, dtype=np.float32),
            y_train=np.ascontiguousarray(splits.y_train, dtype=np.int64),
            x_test=np.ascontiguousarray(splits.x_test, dtype=np.float32),
            y_test=np.ascontiguousarray(splits.y_test, dtype=np.int64),
            input_shape=np.asarray(splits.input_shape, dtype=np.int64),
            num_classes=np.asarray(splits.num_classes, dtype=np.int64),
            meta=np.asarray(json.dumps(meta or {})),
        )
    os.replace(tmp, path)


def read_splits(path: Path) -> DataSplits:
    """The splits in a canonical file, read with ``allow_pickle=False`` and checked for shape and type."""
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        x_train, y_train, x_test, y_test = (npz[key] for key in SPLIT_KEYS)
        input_shape = tuple(int(s) for s in npz["input_shape"])
        num_classes = int(npz["num_classes"])
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if x.dtype != np.float32 or y.dtype != np.int64 or x.shape[1:] != input_shape or len(x) != len(y):
            raise ValueError(f"{path} is not a canonical dataset file: arrays {x.dtype}{x.shape}, {y.dtype}{y.shape}")
    return DataSplits(x_train, y_train, x_test, y_test, input_shape=input_shape, num_classes=num_classes)


def read_meta(path: Path) -> dict[str, object]:
    """The ``meta`` written with the splits (a small read: the arrays are not loaded)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz["meta"]))

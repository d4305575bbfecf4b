"""Reading a user's dataset (uploaded, or registered by path) into splits the service can store.

Each format is read with the library made for it, never with pickle: NumPy ``.npz`` with
``allow_pickle=False`` (:mod:`~nas.data.ingest.arrays`), CSV and Parquet tables with pyarrow
(:mod:`~nas.data.ingest.tables`: numeric columns standardised, strings one-hot up to 64 categories),
zip and tar archives of images in ImageFolder layout with Pillow (:mod:`~nas.data.ingest.images`,
entries checked by :mod:`~nas.data.ingest.archives`). Every problem is a :class:`DatasetRejected`
naming it. Without a test split of its own, a dataset is split once, stratified, with a recorded
seed, so every trial of every job sees the same split. Inputs are standardised with statistics of
the training split only; :attr:`Ingested.summary` records them, for preparing a deployed model's inputs.

Importing this package imports neither numpy, pyarrow nor Pillow: the API validates options with it.
"""

from __future__ import annotations

from pathlib import Path

from nas.data.ingest.base import FORMATS, DatasetRejected, Ingested, IngestLimits, IngestOptions
from nas.data.ingest.folder import store

__all__ = [
    "FORMATS",
    "DatasetRejected",
    "IngestLimits",
    "IngestOptions",
    "Ingested",
    "detect_format",
    "ingest",
    "store",
]

_SUFFIXES = {
    ".npz": "npz",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".zip": "images",
    ".tar": "images",
    ".tar.gz": "images",
    ".tgz": "images",
}


def detect_format(filename: str) -> str:
    """The format a file's name says it is in."""
    lowered = filename.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return _SUFFIXES[suffix]
    raise DatasetRejected(f"can't tell the format of {filename!r} from its name; names end in {', '.join(_SUFFIXES)}")


def ingest(source: Path, options: IngestOptions, limits: IngestLimits) -> Ingested:
    """The dataset in ``source`` read as ``options`` say, checked and split; raises :class:`DatasetRejected`."""
    try:
        empty = source.stat().st_size == 0
    except OSError as exc:
        raise DatasetRejected(f"can't read the dataset: {exc.strerror}") from None
    if empty:
        raise DatasetRejected("the file is empty")
    if options.format == "npz":
        from nas.data.ingest.arrays import read_npz

        return read_npz(source, options, limits)
    if options.format == "images":
        from nas.data.ingest.images import read_images

        return read_images(source, options, limits)
    from nas.data.ingest.tables import read_table

    return read_table(source, options, limits)

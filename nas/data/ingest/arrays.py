"""NumPy ``.npz`` uploads: ``x`` and ``y``, optionally ``x_test`` and ``y_test``, read without pickle.

``x`` is a table ``(N, features)``, grey-scale images ``(N, H, W)`` (given one channel), or images
``(N, C, H, W)``; ``(N, H, W, C)`` is recognised when its last axis has 1, 3 or 4 channels and its
second does not, and turned channels-first. Inputs are standardised per feature (tables) or per
channel (images) with the training split's statistics.
"""

from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy

from nas.data.ingest.archives import open_zip
from nas.data.ingest.base import DatasetRejected, Ingested, IngestLimits, IngestOptions
from nas.data.ingest.prepare import check_finite, check_label_kind, class_indices, split, splits, standardise

KEYS = ("x", "y", "x_test", "y_test")
CHANNELS = (1, 3, 4)


def read_npz(source: Path, options: IngestOptions, limits: IngestLimits) -> Ingested:
    arrays = _load(source, limits)
    given = "x_test" in arrays
    # Popped, so that inputs converted to float32 do not keep the loaded ones alive.
    x, y = _inputs(arrays.pop("x"), "x"), _labels(arrays.pop("y"), "y")
    _check_lengths(x, y, "")
    n_given_train = None
    if given:
        x_test, y_test = _inputs(arrays.pop("x_test"), "x_test"), _labels(arrays.pop("y_test"), "y_test")
        _check_lengths(x_test, y_test, "_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetRejected(f"x_test's examples are shaped {x_test.shape[1:]}, x's {x.shape[1:]}")
        if (y.dtype.kind in "US") != (y_test.dtype.kind in "US"):
            raise DatasetRejected("y and y_test must both hold integers or both class names")
        n_given_train = len(y)
        x, y = np.concatenate([x, x_test]), np.concatenate([y, y_test])
        del x_test, y_test  # split() below copies x: one fewer array alive meanwhile
    labels, class_names = class_indices(y, "the labels y" + (" and y_test" if given else ""))
    x_train, y_train, x_test, y_test, split_summary = split(x, labels, class_names, options, n_given_train)
    mean, std = standardise(x_train, x_test)
    summary: dict[str, Any] = {
        "per": "feature" if x.ndim == 2 else "channel",
        "mean": mean,
        "std": std,
        "split": split_summary,
    }
    return Ingested(splits(x_train, y_train, x_test, y_test, len(class_names)), class_names, given, summary)


def _load(source: Path, limits: IngestLimits) -> dict[str, np.ndarray]:
    """The arrays, once the archive's names, declared sizes and array headers pass: ``np.load`` reads
    members through :mod:`zipfile`, which stops at a member's declared size."""
    try:
        with open_zip(source, limits.max_files) as archive:
            names = _check_members(archive, limits)
    except (zipfile.BadZipFile, OSError, EOFError, struct.error) as exc:
        raise DatasetRejected(f"not a readable .npz (NumPy's zip of arrays): {exc}") from None
    try:
        with np.load(source, allow_pickle=False) as npz:
            return {key: npz[key] for key in names}
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetRejected(f"the .npz is corrupt: {exc}") from None


def _check_members(archive: zipfile.ZipFile, limits: IngestLimits) -> list[str]:
    """The arrays' names, once each member is one of :data:`KEYS`, holds numbers or strings (no
    Python objects) and declares no more data than it holds."""
    infos = archive.infolist()
    names = [info.filename.removesuffix(".npy") for info in infos]
    unknown = sorted(set(names) - set(KEYS))
    if unknown:
        raise DatasetRejected(
            f"the .npz holds arrays {', '.join(map(repr, unknown))}; it may hold only {', '.join(KEYS)}"
        )
    missing = [key for key in ("x", "y") if key not in names]
    if missing:
        raise DatasetRejected(
            f"the .npz lacks {' and '.join(map(repr, missing))}: it needs x (inputs) and y (labels); "
            f"it holds {', '.join(map(repr, names)) or 'no arrays'}"
        )
    if ("x_test" in names) != ("y_test" in names):
        raise DatasetRejected("the .npz holds one of x_test and y_test without the other: give both or neither")
    limits.check_expanded(sum(info.file_size for info in infos), "the .npz's arrays")
    stored = 0  # bytes once read: inputs as float32, labels as int64
    for info, key in zip(infos, names, strict=True):
        with archive.open(info) as member:
            try:
                version = npy.read_magic(member)
                read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, _, dtype = read_header(member)
            except ValueError as exc:
                raise DatasetRejected(f"array {key!r} is not a NumPy array (.npy): {exc}") from None
            header_bytes = member.tell()
        if dtype.hasobject:
            raise DatasetRejected(
                f"array {key!r} is of Python objects, which only pickle can read, and the service never "
                f"unpickles uploads: store numbers (and labels as integers or strings)"
            )
        declared = math.prod(shape) * dtype.itemsize
        if declared > info.file_size - header_bytes:
            raise DatasetRejected(f"array {key!r} declares shape {shape} of {dtype}, more than the data it holds")
        stored += math.prod(shape) * (8 if key.startswith("y") else 4)
    limits.check_expanded(stored, "the .npz's arrays, as float32 inputs and int64 labels,")
    return names


def _inputs(x: np.ndarray, key: str) -> np.ndarray:
    """``x`` as float32, channels-first, checked for numbers and finiteness."""
    if x.dtype.kind not in "biuf":
        raise DatasetRejected(f"array {key!r} is {x.dtype}; inputs must be numbers (bool, int, uint or float)")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in CHANNELS and x.shape[1] not in CHANNELS:
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim not in (2, 4):
        raise DatasetRejected(
            f"array {key!r} is shaped {x.shape}; inputs are (N, features), (N, H, W), (N, C, H, W) or (N, H, W, C)"
        )
    if len(x) == 0 or 0 in x.shape[1:]:
        raise DatasetRejected(f"array {key!r} is empty (shape {x.shape})")
    with np.errstate(over="ignore"):  # beyond float32's range is infinite, and refused just below
        x = np.ascontiguousarray(x, dtype=np.float32)  # float32 inputs are not copied
    check_finite(x, f"array {key!r}")
    return x


def _labels(y: np.ndarray, key: str) -> np.ndarray:
    """``y`` one label per example, of a kind labels may be."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetRejected(f"array {key!r} is shaped {y.shape}; labels are one per example, shaped (N,)")
    check_label_kind(y, f"the labels {key}")
    return y


def _check_lengths(x: np.ndarray, y: np.ndarray, suffix: str) -> None:
    if len(x) != len(y):
        raise DatasetRejected(f"x{suffix} holds {len(x)} examples but y{suffix} {len(y)} labels")

"""From the arrays of any format to stored splits: labels to class indices, the checks every dataset
passes, the stratified split, and standardisation from the training split."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nas.data.base import DataSplits
from nas.data.ingest.base import DatasetRejected, IngestOptions


def class_indices(labels: np.ndarray, what: str, field: str | None = "file") -> tuple[np.ndarray, list[str]]:
    """Labels (integers, booleans or names) as indices ``0..C-1`` into the sorted class names."""
    check_label_kind(labels, what, field)
    if labels.dtype.kind == "S":
        try:
            labels = np.char.decode(labels, "utf-8")
        except UnicodeDecodeError:
            raise DatasetRejected(f"{what} hold byte strings that are not UTF-8 text", field) from None
    values, indices = np.unique(labels, return_inverse=True)
    return indices.astype(np.int64).reshape(-1), [str(value) for value in values.tolist()]


def check_label_kind(labels: np.ndarray, what: str, field: str | None = "file") -> None:
    """Refuse labels that are not integers, booleans or strings.

    Floats are refused, even whole ones: a column of measurements given as the label by mistake
    would otherwise become thousands of classes.
    """
    if labels.dtype.kind not in "biuUS":
        raise DatasetRejected(
            f"{what} are {labels.dtype} values; labels must be integers or class names (strings)"
            + (" - whole numbers stored as floats: convert them to integers" if labels.dtype.kind == "f" else ""),
            field,
        )


def check_finite(x: np.ndarray, what: str) -> None:
    """Refuse NaN and infinite inputs, saying how many and where the first is."""
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetRejected(f"{what} holds {count} NaN or infinite values (the first at index {first})")


def split(
    x: np.ndarray, y: np.ndarray, class_names: list[str], options: IngestOptions, n_given_train: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(x_train, y_train, x_test, y_test, split summary)``.

    With ``n_given_train`` the upload carried its own test split: the first ``n_given_train``
    examples train, the rest test, and every test class must be one the model can learn. Otherwise a
    stratified split with ``options.split_seed`` holds out ``options.test_fraction`` of every class.
    """
    num_classes = len(class_names)
    if num_classes < 2:
        only = f" ({class_names[0]!r})" if class_names else ""
        raise DatasetRejected(f"the labels hold one class only{only}; a classifier needs at least two")
    if n_given_train is not None:
        train_counts = np.bincount(y[:n_given_train], minlength=num_classes)
        missing = [class_names[c] for c in np.unique(y[n_given_train:]) if train_counts[c] == 0]
        if missing:
            raise DatasetRejected(f"the test split holds classes the training split lacks: {listed(missing)}")
        if n_given_train == len(y):
            raise DatasetRejected("the test split is empty")
        return x[:n_given_train], y[:n_given_train], x[n_given_train:], y[n_given_train:], {"given": True}
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y, minlength=num_classes)
    scarce = [f"{class_names[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < 2)]
    if scarce:
        raise DatasetRejected(
            f"classes with fewer than 2 examples can't be split into train and test: {listed(scarce)}"
        )
    n_test = math.ceil(options.test_fraction * len(y))
    if n_test < num_classes or len(y) - n_test < num_classes:
        raise DatasetRejected(
            f"{len(y)} examples of {num_classes} classes can't be split stratified at test_fraction "
            f"{options.test_fraction}: each split needs at least one example of every class",
            "test_fraction",
        )
    train, test = train_test_split(
        np.arange(len(y)), test_size=options.test_fraction, random_state=options.split_seed, stratify=y
    )
    summary = {"seed": options.split_seed, "test_fraction": options.test_fraction}
    return x[train], y[train], x[test], y[test], summary


def listed(items: list[str], at_most: int = 10) -> str:
    """``items`` for a message: the first ``at_most``, and how many more."""
    shown = ", ".join(items[:at_most])
    return shown + (f" and {len(items) - at_most} more" if len(items) > at_most else "")


def standardise(
    x_train: np.ndarray, x_test: np.ndarray, features: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """Centre and scale, in place, each index of axis 1 (a feature of a table, a channel of an image)
    by the training split's mean and standard deviation; returns them.

    ``features`` limits it to those indices of axis 1 (a table's numeric columns). A constant one is
    only centred: its divisor is 1, and the returned std is the divisor applied.
    """
    indices = np.arange(x_train.shape[1]) if features is None else features
    means, stds = [], []
    for i in indices:
        column = x_train[:, i]
        mean = float(column.mean(dtype=np.float64))  # a buffered reduction: no float64 copy
        std = _std(column, mean)
        std = std if std > 0 and math.isfinite(std) else 1.0
        for x in (x_train, x_test):
            x[:, i] -= np.float32(mean)
            x[:, i] /= np.float32(std)
        means.append(mean)
        stds.append(std)
    return means, stds


# Elements of a column turned to float64 at once while its deviation is summed.
STD_CHUNK_ELEMENTS = 1 << 22


def _std(column: np.ndarray, mean: float) -> float:
    """The population standard deviation in float64, a block of rows at a time.

    ``ndarray.std(dtype=float64)`` materialises the whole column's deviations in float64, twice
    the size of a float32 image set's channel; this holds 32 MiB at most.
    """
    rows = max(1, STD_CHUNK_ELEMENTS // max(1, column[0].size))
    total = 0.0
    for start in range(0, len(column), rows):
        deviation = column[start : start + rows].astype(np.float64) - mean
        total += float(np.vdot(deviation, deviation))
    return math.sqrt(total / column.size)


def splits(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, num_classes: int
) -> DataSplits:
    """The canonical splits: float32 inputs, int64 labels, the shape of one example."""
    return DataSplits(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        num_classes=num_classes,
    )

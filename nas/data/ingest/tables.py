"""CSV and Parquet tables (pyarrow): one row per example, the label in a named column.

Numeric columns are standardised with the training split's mean and standard deviation, booleans
become 0/1, and string columns are one-hot encoded over their distinct values (sorted), at most
:data:`MAX_CATEGORIES` of them: past that a column is more likely an identifier or free text, whose
one-hot encoding would be as wide as the table is long and teach nothing. Such a column is refused,
named, rather than dropped silently. A missing value anywhere is refused, naming its column: the
service won't guess how to fill it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nas.data.ingest.base import DatasetRejected, Ingested, IngestLimits, IngestOptions
from nas.data.ingest.prepare import class_indices, listed, split, splits, standardise

MAX_CATEGORIES = 64


def read_table(source: Path, options: IngestOptions, limits: IngestLimits) -> Ingested:
    table = _read_csv(source, limits) if options.format == "csv" else _read_parquet(source, limits)
    table = _decoded(table)
    label_column = options.label_column
    assert label_column is not None  # IngestOptions requires it for tables
    names = table.column_names
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetRejected(f"the table names columns more than once: {listed(list(map(repr, duplicates)))}")
    if label_column not in names:
        raise DatasetRejected(
            f"the table has no column {label_column!r} (label_column); "
            f"its columns are {listed(list(map(repr, names)), 50)}",
            "label_column",
        )
    if table.num_rows == 0:
        raise DatasetRejected("the table has no rows")
    features = [name for name in names if name != label_column]
    if not features:
        raise DatasetRejected(f"the table has no column besides the label {label_column!r}")
    for name in names:
        _check_no_nulls(table.column(name), name)
    labels, class_names = class_indices(
        _label_values(table.column(label_column), label_column),
        f"the labels in column {label_column!r}",
        "label_column",
    )
    x, columns, feature_names, numeric = _encode(table, features, limits)
    del table
    x_train, y_train, x_test, y_test, split_summary = split(x, labels, class_names, options, None)
    means, stds = standardise(x_train, x_test, numeric)
    stats = iter(zip(means, stds, strict=True))
    for column in columns:
        if column["kind"] == "numeric":
            column["mean"], column["std"] = next(stats)
    summary: dict[str, Any] = {
        "label_column": label_column,
        "columns": columns,
        "features": feature_names,
        "split": split_summary,
    }
    return Ingested(splits(x_train, y_train, x_test, y_test, len(class_names)), class_names, False, summary)


def _read_csv(source: Path, limits: IngestLimits) -> pa.Table:
    from pyarrow import csv

    # An open file, not a path: pyarrow would decompress a path named *.gz, unbounded.
    try:
        with source.open("rb") as handle:
            table = csv.read_csv(handle, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DatasetRejected(f"not a readable CSV table: {exc}") from None
    limits.check_expanded(table.nbytes, "the table")
    return table


def _read_parquet(source: Path, limits: IngestLimits) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(source) as parquet:
            metadata = parquet.metadata
            groups = range(metadata.num_row_groups)
            limits.check_expanded(sum(metadata.row_group(i).total_byte_size for i in groups), "the table")
            parts, nbytes = [], 0
            for i in groups:  # what the row groups declare may be a lie: count what they hold
                parts.append(parquet.read_row_group(i))
                nbytes += parts[-1].nbytes
                limits.check_expanded(nbytes, "the table")
            return pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DatasetRejected(f"not a readable Parquet table: {exc}") from None


def _decoded(table: pa.Table) -> pa.Table:
    """``table`` with dictionary-encoded columns (pandas' categoricals) as plain ones."""
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table


def _check_no_nulls(column: pa.ChunkedArray, name: str) -> None:
    nulls = column.null_count
    if nulls:
        first = int(pc.index(pc.is_null(column), True).as_py())
        raise DatasetRejected(
            f"column {name!r} has {nulls} missing values (empty, NA, NaN or null; the first in row {first + 1}); "
            f"fill or drop them before uploading"
        )


def _label_values(column: pa.ChunkedArray, name: str) -> np.ndarray:
    kind = _kind(column.type)
    if kind == "categorical":
        return np.asarray(column.cast(pa.string()).to_pylist(), dtype=str)
    if kind == "boolean" or pa.types.is_integer(column.type):
        return column.to_numpy()
    raise DatasetRejected(
        f"the labels in column {name!r} are {column.type}; labels must be integers or class names (strings)"
        + (" - whole numbers stored as floats: write them as integers" if pa.types.is_floating(column.type) else ""),
        "label_column",
    )


def _kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "numeric"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "categorical"
    return None


def _encode(
    table: pa.Table, features: list[str], limits: IngestLimits
) -> tuple[np.ndarray, list[dict[str, Any]], list[str], np.ndarray]:
    """``(x, column summaries, feature names, indices of the numeric features)``."""
    columns: list[dict[str, Any]] = []
    for name in features:
        column = table.column(name)
        kind = _kind(column.type)
        if kind is None:
            raise DatasetRejected(f"column {name!r} is {column.type}; columns must hold numbers, booleans or strings")
        summary: dict[str, Any] = {"name": name, "kind": kind}
        if kind == "categorical":
            categories = sorted(pc.unique(column.cast(pa.string())).to_pylist())
            if len(categories) > MAX_CATEGORIES:
                raise DatasetRejected(
                    f"column {name!r} holds {len(categories)} distinct strings; a categorical column may hold at "
                    f"most {MAX_CATEGORIES} (it is one-hot encoded): drop it, or encode it as numbers"
                )
            summary["categories"] = categories
        columns.append(summary)
    feature_names = [feature for column in columns for feature in _feature_names(column)]
    limits.check_expanded(table.num_rows * len(feature_names) * 4, "the encoded table")
    x = np.zeros((table.num_rows, len(feature_names)), dtype=np.float32)
    numeric = []
    at = 0
    for summary in columns:
        name = summary["name"]
        column = table.column(name)
        if summary["kind"] == "categorical":
            codes = pc.index_in(column.cast(pa.string()), value_set=pa.array(summary["categories"], pa.string()))
            x[np.arange(table.num_rows), at + codes.to_numpy()] = 1.0
            at += len(summary["categories"])
            continue
        with np.errstate(over="ignore"):  # beyond float32's range is infinite, and refused just below
            x[:, at] = column.cast(pa.float64()).to_numpy()
        bad = int((~np.isfinite(x[:, at])).sum())
        if bad:
            raise DatasetRejected(
                f"column {name!r} holds {bad} NaN or infinite values (or numbers beyond float32's range)"
            )
        if summary["kind"] == "numeric":
            numeric.append(at)
        at += 1
    return x, columns, feature_names, np.asarray(numeric, dtype=np.int64)


def _feature_names(column: dict[str, Any]) -> list[str]:
    if column["kind"] == "categorical":
        return [f"{column['name']}={category}" for category in column["categories"]]
    return [column["name"]]

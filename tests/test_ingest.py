"""Reading users' datasets (nas.data.ingest) and registering them by path (nas.data.roots), on real
files written here: scikit-learn's bundled sets as npz, CSV and Parquet, digits as PNG archives,
and every malformed upload the service must refuse by name."""

from __future__ import annotations

import io
import pickle
import stat
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

from nas.data.ingest import (
    DatasetRejected,
    Ingested,
    IngestLimits,
    IngestOptions,
    detect_format,
    ingest,
    store,
)
from nas.data.ingest.archives import open_zip
from nas.data.roots import resolve_under_roots
from nas.data.stored import read_meta, read_splits
from nas.settings import Settings

LIMITS = IngestLimits(expanded_bytes=64 << 20, image_pixels=1 << 20)
IMAGE_OPTIONS = IngestOptions("images", image_size=8, color="grayscale")


def rejected(source: Path, options: IngestOptions, match: str, limits: IngestLimits = LIMITS) -> DatasetRejected:
    with pytest.raises(DatasetRejected, match=match) as info:
        ingest(source, options, limits)
    return info.value


def digits_npz(path: Path, **arrays: np.ndarray) -> Path:
    digits = load_digits()
    np.savez(path, **({"x": digits.images, "y": digits.target} | arrays))
    return path


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_pngs(per_class: int = 12, prefix: str = "") -> dict[str, bytes]:
    """``{<prefix><class>/<i>.png: PNG}`` of scikit-learn's digits, ``per_class`` of each."""
    digits = load_digits()
    files = {}
    for label in range(10):
        for i in np.flatnonzero(digits.target == label)[:per_class]:
            files[f"{prefix}{label}/{i}.png"] = png((digits.images[i] * 15).astype(np.uint8))
    return files


def write_zip(path: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_tar(
    path: Path, files: dict[str, bytes], mode: str = "w:gz", extra: Callable[[tarfile.TarFile], None] | None = None
) -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if extra:
            extra(archive)
    return path


def wine_frame() -> pd.DataFrame:
    frame = load_wine(as_frame=True).frame
    frame["strength"] = np.where(frame["alcohol"] > 13, "strong", "mild")
    frame["dark"] = frame["color_intensity"] > 5
    return frame


# --- options, formats, limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "format_"),
    [
        ("a.npz", "npz"),
        ("A.CSV", "csv"),
        ("t.parquet", "parquet"),
        ("t.pq", "parquet"),
        ("i.zip", "images"),
        ("i.tar", "images"),
        ("i.tar.gz", "images"),
        ("i.tgz", "images"),
    ],
)
def test_the_format_comes_from_the_file_name(name: str, format_: str) -> None:
    assert detect_format(name) == format_


def test_an_unknown_file_name_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(DatasetRejected, match=r"'data.xlsx'.*\.npz, \.csv, \.parquet") as info:
        detect_format("data.xlsx")
    assert info.value.field == "file"


@pytest.mark.parametrize(
    ("options", "field", "match"),
    [
        ({"format": "xls"}, "file", "unknown format 'xls'"),
        ({"format": "csv"}, "label_column", "needs label_column"),
        ({"format": "npz", "label_column": "y"}, "label_column", "applies to csv and parquet"),
        ({"format": "images", "image_size": 0}, "image_size", "image_size must be an integer from 4 to 512"),
        ({"format": "images", "image_size": 4096}, "image_size", "not 4096"),
        ({"format": "images", "color": "cmyk"}, "color", "grayscale, rgb"),
        ({"format": "npz", "test_fraction": 1.0}, "test_fraction", "from 0.05 to 0.9"),
        ({"format": "npz", "split_seed": -1}, "split_seed", "split_seed must be"),
        ({"format": "npz", "split_seed": True}, "split_seed", "split_seed must be"),
    ],
)
def test_options_out_of_range_are_refused_at_their_field(options: dict, field: str, match: str) -> None:
    with pytest.raises(DatasetRejected, match=match) as info:
        IngestOptions(**options)
    assert info.value.field == field


def test_an_empty_label_column_is_none() -> None:
    assert IngestOptions("images", label_column="").label_column is None


def test_a_refusal_keeps_its_field_across_processes() -> None:
    copy = pickle.loads(pickle.dumps(DatasetRejected("no column 'kind'", "label_column")))
    assert (str(copy), copy.field) == ("no column 'kind'", "label_column")


def test_limits_come_from_the_settings() -> None:
    limits = IngestLimits.from_settings(Settings(limit_dataset_expanded_bytes=123, limit_image_pixels=456))
    assert (limits.expanded_bytes, limits.image_pixels) == (123, 456)


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    rejected(tmp_path / "empty.csv", IngestOptions("csv", label_column="y"), "the file is empty")
    rejected(tmp_path / "gone.npz", IngestOptions("npz"), "can't read the dataset")


def test_importing_the_package_loads_no_array_library() -> None:
    import subprocess

    code = "import sys, nas.data.ingest, nas.data.roots; print(sorted({'numpy', 'pyarrow', 'PIL'} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


# --- npz -----------------------------------------------------------------------------------------


def test_npz_images_are_split_stratified_and_standardised_from_train(tmp_path: Path) -> None:
    got = ingest(digits_npz(tmp_path / "d.npz"), IngestOptions("npz", test_fraction=0.25, split_seed=3), LIMITS)
    splits = got.splits
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10 and not got.test_given
    assert (len(splits.y_train), len(splits.y_test)) == (1347, 450)
    assert got.class_names == [str(i) for i in range(10)]
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int64
    # stratified: every class holds about a quarter of its examples out
    counts = np.bincount(load_digits().target)
    assert np.all(np.abs(np.bincount(splits.y_test) - counts / 4) <= 1)
    assert abs(float(splits.x_train.mean())) < 1e-5 and abs(float(splits.x_train.std()) - 1) < 1e-4
    assert got.summary["per"] == "channel" and got.summary["split"] == {"seed": 3, "test_fraction": 0.25}
    # the statistics are the training split's own: undoing them gives back the raw pixels of train
    raw = splits.x_train * got.summary["std"][0] + got.summary["mean"][0]
    assert np.allclose(raw, np.round(raw), atol=1e-4) and raw.min() >= -1e-4 and raw.max() <= 16 + 1e-4
    assert abs(float(splits.x_test.mean())) > 1e-6  # the test split did not contribute


def test_the_split_is_the_seeds_alone(tmp_path: Path) -> None:
    source = digits_npz(tmp_path / "d.npz")
    first, again, other = (ingest(source, IngestOptions("npz", split_seed=seed), LIMITS) for seed in (1, 1, 2))
    assert np.array_equal(first.splits.x_test, again.splits.x_test) and np.array_equal(
        first.splits.y_train, again.splits.y_train
    )
    assert not np.array_equal(first.splits.x_test, other.splits.x_test)


def test_npz_channels_last_images_become_channels_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x=x, y=np.repeat(np.arange(4), 10))
    got = ingest(tmp_path / "c.npz", IngestOptions("npz"), LIMITS)
    assert got.splits.input_shape == (3, 6, 5) and len(got.summary["mean"]) == 3
    mean, std = (np.asarray(got.summary[k])[:, None, None] for k in ("mean", "std"))
    restored = {tuple(np.round(image * std + mean).astype(np.uint8).ravel()) for image in got.splits.x_train}
    assert restored <= {tuple(image.transpose(2, 0, 1).ravel()) for image in x}


def test_npz_given_test_split_and_named_labels(tmp_path: Path) -> None:
    data = load_breast_cancer()
    names = data.target_names[data.target]  # strings: 'benign', 'malignant'
    x, x_test = data.data[:400], data.data[400:] + 1000.0  # a test split unlike train moves no statistic
    np.savez(tmp_path / "b.npz", x=x, y=names[:400], x_test=x_test, y_test=names[400:])
    got = ingest(tmp_path / "b.npz", IngestOptions("npz"), LIMITS)
    assert got.test_given and got.summary["split"] == {"given": True}
    assert (len(got.splits.y_train), len(got.splits.y_test)) == (400, len(data.target) - 400)
    assert got.class_names == ["benign", "malignant"] and got.splits.input_shape == (30,)
    assert np.allclose(got.summary["mean"], x.mean(axis=0)) and np.allclose(got.summary["std"], x.std(axis=0))
    assert np.array_equal(np.asarray(got.class_names)[got.splits.y_test], names[400:])


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"x": np.array([object(), object()], dtype=object), "y": np.array([0, 1])},
            r"array 'x' is of Python objects.*never unpickles",
        ),
        ({"x": np.zeros((4, 2))}, r"lacks 'y'.*it holds 'x'"),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4), "w": np.zeros(4)},
            r"holds arrays 'w'; it may hold only x, y, x_test, y_test",
        ),
        ({"x": np.zeros((4, 2)), "y": np.arange(4), "x_test": np.zeros((2, 2))}, "x_test and y_test without the other"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0])}, "x holds 4 examples but y 3 labels"),
        (
            {"x": np.array([[0.0], [np.nan], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])},
            r"array 'x' holds 1 NaN or infinite values \(the first at index \(1, 0\)\)",
        ),
        ({"x": np.array([[0.0], [1.0], [np.inf], [2.0]]), "y": np.array([0, 1, 0, 1])}, "NaN or infinite"),
        ({"x": np.array([[1e300], [1.0], [0.0], [2.0]]), "y": np.array([0, 1, 0, 1])}, "NaN or infinite"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, dtype=int)}, r"one class only \('0'\)"),
        (
            {"x": np.zeros((4, 2)), "y": np.array([0.0, 1.0, 0.0, 1.0])},
            r"float64 values; labels must be integers or class names.*convert them",
        ),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4) % 2, "x_test": np.zeros((2, 2)), "y_test": np.array([0.0, 1.0])},
            r"the labels y_test are float64 values",
        ),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4) % 2, "x_test": np.zeros((2, 2)), "y_test": np.array(["a", "b"])},
            "y and y_test must both hold integers or both class names",
        ),
        (
            {"x": np.zeros((4, 2)), "y": np.zeros((4, 2), dtype=int)},
            r"'y' is shaped \(4, 2\); labels are one per example",
        ),
        ({"x": np.array(["a", "b", "c", "d"]), "y": np.array([0, 1, 0, 1])}, "inputs must be numbers"),
        ({"x": np.zeros(4), "y": np.array([0, 1, 0, 1])}, r"'x' is shaped \(4,\); inputs are"),
        ({"x": np.zeros((6, 2)), "y": np.array([0, 0, 0, 1, 1, 2])}, r"fewer than 2 examples.*'2' \(1\)"),
        (
            {
                "x": np.zeros((4, 2)),
                "y": np.array([0, 1, 0, 1]),
                "x_test": np.zeros((2, 3)),
                "y_test": np.array([0, 1]),
            },
            r"x_test's examples are shaped \(3,\), x's \(2,\)",
        ),
        (
            {
                "x": np.zeros((4, 2)),
                "y": np.array([0, 1, 0, 1]),
                "x_test": np.zeros((2, 2)),
                "y_test": np.array([0, 7]),
            },
            "classes the training split lacks: 7",
        ),
    ],
)
def test_malformed_npz_is_refused_by_name(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    assert rejected(tmp_path / "bad.npz", IngestOptions("npz"), match).field == "file"


def test_a_file_that_is_no_npz_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "plain.npy", np.zeros(3))
    rejected(tmp_path / "plain.npy", IngestOptions("npz"), r"not a readable \.npz")
    whole = digits_npz(tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    rejected(tmp_path / "cut.npz", IngestOptions("npz"), r"not a readable \.npz")


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("x_member", "match"),
    [
        (b"raw bytes, no array", r"array 'x' is not a NumPy array \(\.npy\)"),
        (
            npy_header((10**6,)) + bytes(16),
            r"array 'x' declares shape \(1000000,\) of float64, more than the data it holds",
        ),
        (npy_header((2,), "|O") + bytes(16), "array 'x' is of Python objects"),
    ],
)
def test_npz_members_are_checked_before_numpy_reads_them(tmp_path: Path, x_member: bytes, match: str) -> None:
    y = io.BytesIO()
    np.save(y, np.array([0, 1]))
    write_zip(tmp_path / "m.npz", {"x.npy": x_member, "y.npy": y.getvalue()})
    rejected(tmp_path / "m.npz", IngestOptions("npz"), match)


def test_npz_arrays_expanding_past_the_limit_are_refused_before_reading(tmp_path: Path) -> None:
    np.savez_compressed(
        tmp_path / "z.npz", x=np.zeros((4096, 256)), y=np.arange(4096) % 2
    )  # 8 MiB of zeros, compressed
    assert (tmp_path / "z.npz").stat().st_size < 100_000
    rejected(
        tmp_path / "z.npz",
        IngestOptions("npz"),
        r"arrays would expand to 8\.\d MiB, over the limit of 1\.0 MiB",
        IngestLimits(1 << 20, 1 << 20),
    )


def test_npz_inputs_are_counted_as_the_float32_they_become(tmp_path: Path) -> None:
    """0.75 MiB of uint8 images fit a 1 MiB limit as stored in the file, not as the 3 MiB read."""
    x = np.zeros((1024, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x=x, y=np.arange(1024) % 2)
    rejected(
        tmp_path / "u8.npz",
        IngestOptions("npz"),
        r"the \.npz's arrays, as float32 inputs and int64 labels, would expand to 3\.1 MiB, over the limit of 1\.0 MiB",
        IngestLimits(1 << 20, 1 << 20),
    )


# --- tables --------------------------------------------------------------------------------------


def test_csv_numeric_boolean_and_categorical_columns(tmp_path: Path) -> None:
    frame = wine_frame()
    frame.to_csv(tmp_path / "wine.csv", index=False)
    got = ingest(tmp_path / "wine.csv", IngestOptions("csv", label_column="target", split_seed=5), LIMITS)
    features = got.summary["features"]
    assert features[-3:] == ["strength=mild", "strength=strong", "dark"] and len(features) == 16
    assert got.splits.input_shape == (16,) and got.class_names == ["0", "1", "2"]
    assert (len(got.splits.y_train), len(got.splits.y_test)) == (142, 36)
    columns = {c["name"]: c for c in got.summary["columns"]}
    assert columns["strength"] == {"name": "strength", "kind": "categorical", "categories": ["mild", "strong"]}
    assert columns["dark"] == {"name": "dark", "kind": "boolean"}
    assert columns["alcohol"]["kind"] == "numeric" and "target" not in columns
    numeric = got.splits.x_train[:, :13]
    assert np.allclose(numeric.mean(axis=0), 0, atol=1e-5) and np.allclose(numeric.std(axis=0), 1, atol=1e-4)
    assert not np.allclose(got.splits.x_test[:, :13].mean(axis=0), 0, atol=1e-3)  # statistics of train only
    onehot = got.splits.x_train[:, 13:15]
    assert set(np.unique(onehot)) == {0.0, 1.0} and np.all(onehot.sum(axis=1) == 1)
    assert set(np.unique(got.splits.x_train[:, 15])) == {0.0, 1.0}
    # the recorded statistics give back the raw column
    alcohol = got.splits.x_train[:, 0] * columns["alcohol"]["std"] + columns["alcohol"]["mean"]
    assert np.abs(alcohol[:, None] - frame["alcohol"].to_numpy()[None, :]).min(axis=1).max() < 1e-4


def test_parquet_with_named_labels_matches_csv(tmp_path: Path) -> None:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame["diagnosis"] = data.target_names[data.target]
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "bc.parquet")
    frame.to_csv(tmp_path / "bc.csv", index=False)
    from_parquet = ingest(tmp_path / "bc.parquet", IngestOptions("parquet", label_column="diagnosis"), LIMITS)
    from_csv = ingest(tmp_path / "bc.csv", IngestOptions("csv", label_column="diagnosis"), LIMITS)
    assert from_parquet.class_names == ["benign", "malignant"] and from_parquet.splits.input_shape == (30,)
    assert np.array_equal(from_parquet.splits.y_test, from_csv.splits.y_test)
    assert np.allclose(from_parquet.splits.x_train, from_csv.splits.x_train, atol=1e-4)


def test_parquet_categoricals_are_read_as_their_values(tmp_path: Path) -> None:
    frame = wine_frame()
    frame["strength"] = frame["strength"].astype("category")
    frame["target"] = load_wine().target_names[frame["target"]]
    frame["target"] = frame["target"].astype("category")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert pa.types.is_dictionary(table.schema.field("strength").type)
    pq.write_table(table, tmp_path / "wine.parquet")
    got = ingest(tmp_path / "wine.parquet", IngestOptions("parquet", label_column="target"), LIMITS)
    assert got.class_names == ["class_0", "class_1", "class_2"]
    assert got.summary["features"][-3:] == ["strength=mild", "strength=strong", "dark"]


def test_a_missing_label_column_is_refused_listing_the_columns(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b,kind\n1,2,x\n3,4,y\n")
    error = rejected(
        tmp_path / "t.csv",
        IngestOptions("csv", label_column="label"),
        "no column 'label'.*its columns are 'a', 'b', 'kind'",
    )
    assert error.field == "label_column"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,label\n1,x\n,y\n3,x\n", r"column 'a' has 1 missing values.*row 2"),
        ("a,label\n1,x\nNA,y\n3,x\n", "column 'a' has 1 missing values"),
        ("a,label\n1,x\n2,\n3,x\n", "column 'label' has 1 missing values"),
        ("a,s,label\n1,,x\n2,u,y\n", "column 's' has 1 missing values"),
        ("a,label\n1,x\ninf,y\n3,x\n", "column 'a' holds 1 NaN or infinite values"),
        ("a,label\n1,0.5\n2,1.5\n", r"column 'label' are double; labels must be integers or class names"),
        ("a,label\n", "the table has no rows"),
        ("label\nx\ny\n", "no column besides the label"),
        ("a,a,label\n1,2,x\n", "names columns more than once: 'a'"),
        ("a,label\n1,x\n2\n", "not a readable CSV table"),
    ],
)
def test_malformed_csv_is_refused_by_name(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    rejected(tmp_path / "t.csv", IngestOptions("csv", label_column="label"), match)


def test_a_column_of_too_many_categories_is_refused_by_name(tmp_path: Path) -> None:
    rows = "".join(f"{i},id{i},{i % 2}\n" for i in range(65))
    (tmp_path / "t.csv").write_text("a,customer,label\n" + rows)
    rejected(
        tmp_path / "t.csv",
        IngestOptions("csv", label_column="label"),
        "column 'customer' holds 65 distinct strings.*at most 64",
    )


def test_parquet_refusals(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    rejected(tmp_path / "junk.parquet", IngestOptions("parquet", label_column="y"), "not a readable Parquet table")
    table = pa.table({"when": pa.array([1, 2, 3], pa.timestamp("s")), "y": [0, 1, 0]})
    pq.write_table(table, tmp_path / "t.parquet")
    rejected(
        tmp_path / "t.parquet",
        IngestOptions("parquet", label_column="y"),
        r"column 'when' is timestamp\[\w+\]; columns must hold numbers, booleans or strings",
    )
    pq.write_table(pa.table({"a": [1.0, float("nan"), 2.0, 3.0], "y": [0, 1, 0, 1]}), tmp_path / "nan.parquet")
    rejected(tmp_path / "nan.parquet", IngestOptions("parquet", label_column="y"), "column 'a' holds 1 NaN")
    pq.write_table(pa.table({"a": np.zeros(300_000), "y": np.arange(300_000) % 2}), tmp_path / "big.parquet")
    rejected(
        tmp_path / "big.parquet",
        IngestOptions("parquet", label_column="y"),
        "the table would expand",
        IngestLimits(1 << 20, 1 << 20),
    )


# --- image archives ------------------------------------------------------------------------------


def test_an_image_folder_zip_in_grayscale_and_rgb(tmp_path: Path) -> None:
    files = digit_pngs(prefix="digits/") | {
        "digits/README.txt": b"hi",
        "__MACOSX/digits/._0.png": b"x",
        "digits/.DS_Store": b"x",
    }
    source = write_zip(tmp_path / "d.zip", files)
    grey = ingest(source, IngestOptions("images", image_size=16, color="grayscale"), LIMITS)
    assert grey.splits.input_shape == (1, 16, 16) and grey.class_names == [str(i) for i in range(10)]
    assert (len(grey.splits.y_train), len(grey.splits.y_test)) == (96, 24)
    assert sorted(np.bincount(grey.splits.y_test)) == [2] * 6 + [3] * 4  # stratified: 12 per class, 24 held out
    assert grey.summary["source_sizes"] == {"width": [8, 8], "height": [8, 8]} and grey.summary["skipped_files"] == 1
    x = grey.splits.x_train
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4
    pixels = x * grey.summary["std"][0] + grey.summary["mean"][0]  # back in [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    rgb = ingest(source, IngestOptions("images", image_size=8, color="rgb"), LIMITS)
    assert rgb.splits.input_shape == (3, 8, 8) and len(rgb.summary["mean"]) == 3
    assert np.allclose(rgb.splits.x_train[:, 0], rgb.splits.x_train[:, 2])  # grey pictures: equal channels


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    def png16(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((6, 6), value, dtype=np.uint16)).save(buffer, format="PNG")
        return buffer.getvalue()

    files = {f"{label}/{i}.png": png16(value) for label, value in (("dark", 1000), ("bright", 60000)) for i in range(5)}
    got = ingest(write_zip(tmp_path / "w.zip", files), IMAGE_OPTIONS, LIMITS)
    mean, std = got.summary["mean"][0], got.summary["std"][0]
    pixels = np.concatenate([got.splits.x_train, got.splits.x_test]) * std + mean
    assert np.allclose(sorted(set(np.round(pixels.ravel() * 255).astype(int))), [4, 233])


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_a_tar_with_train_and_test_folders_gives_the_test_split(tmp_path: Path, mode: str) -> None:
    files = digit_pngs(per_class=5, prefix="set/train/") | digit_pngs(per_class=2, prefix="set/test/")
    got = ingest(write_tar(tmp_path / "d.tar", files, mode), IMAGE_OPTIONS, LIMITS)
    assert got.test_given and got.summary["split"] == {"given": True}
    assert (len(got.splits.y_train), len(got.splits.y_test)) == (50, 20)
    assert np.array_equal(np.bincount(got.splits.y_test), [2] * 10)


def test_store_writes_the_canonical_file_and_a_sample_grid(tmp_path: Path) -> None:
    source = write_zip(tmp_path / "d.zip", digit_pngs())
    got = ingest(source, IngestOptions("images", image_size=12, color="grayscale", split_seed=7), LIMITS)
    facts = store(got, tmp_path / "stored")
    assert (
        facts["input_shape"] == [1, 12, 12] and facts["num_classes"] == 10 and facts["class_names"] == got.class_names
    )
    assert (facts["n_train"], facts["n_test"]) == (96, 24) and sum(facts["class_counts"]["test"]) == 24
    files = sorted(p.name for p in (tmp_path / "stored").iterdir())
    assert files == ["data.npz", "samples.png"]
    assert facts["stored_bytes"] == sum((tmp_path / "stored" / name).stat().st_size for name in files)
    splits = read_splits(tmp_path / "stored" / "data.npz")
    assert np.array_equal(splits.x_test, got.splits.x_test) and splits.input_shape == (1, 12, 12)
    meta = read_meta(tmp_path / "stored" / "data.npz")
    assert meta == {
        "class_names": got.class_names,
        "summary": facts["summary"],
        "split_seed": 7,
        "test_fraction": 0.2,
        "test_given": False,
    }
    with Image.open(tmp_path / "stored" / "samples.png") as grid:
        assert grid.mode == "L" and grid.size == (8 * 14 + 2, 10 * 14 + 2)  # 8 per class, a row per class


def test_store_of_a_table_writes_no_sample_grid(tmp_path: Path) -> None:
    wine_frame().to_csv(tmp_path / "wine.csv", index=False)
    facts = store(
        ingest(tmp_path / "wine.csv", IngestOptions("csv", label_column="target"), LIMITS), tmp_path / "stored"
    )
    assert [p.name for p in (tmp_path / "stored").iterdir()] == ["data.npz"]
    assert facts["input_shape"] == [16] and facts["summary"]["features"][0] == "alcohol"


def png_declaring(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def with_link(kind: bytes, name: str, target: str) -> Callable[[tarfile.TarFile], None]:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        archive.addfile(info)

    return add


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"notes/readme.txt": b"hi"}, r"holds no images.*1 other files, e.g. 'notes/readme.txt'"),
        ({"0/a.png": b"this is no png"}, r"image '0/a.png' won't decode"),
        ({"0/a.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"}, r"'0/a.png' won't decode: cannot identify"),
        ({"0/a.png": png_declaring(100_000, 100_000)}, r"image '0/a.png' is too large \(NAS_LIMIT_IMAGE_PIXELS\)"),
        ({"0/a.png": png(np.zeros((1000, 1100), np.uint8))}, r"image '0/a.png' is too large"),
        (
            {"a.png": png(np.zeros((4, 4), np.uint8)), "b.png": png(np.zeros((4, 4), np.uint8))},
            r"'a.png' lies in no class folder",
        ),
        ({"0/a.png": png(np.zeros((4, 4), np.uint8)), "0/b.png": png(np.zeros((4, 4), np.uint8))}, "one class only"),
        ({"../0/a.png": png(np.zeros((4, 4), np.uint8))}, r"entry '../0/a.png' climbs out"),
        ({"0/../../a.png": b"x"}, "climbs out of the archive's folder"),
        ({"/etc/0/a.png": b"x"}, "'/etc/0/a.png' has an absolute path"),
        ({"C:\\0\\a.png": b"x"}, "has an absolute path"),
    ],
)
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_malformed_image_archives_are_refused_by_name(
    tmp_path: Path, files: dict[str, bytes], match: str, kind: str
) -> None:
    source = write_zip(tmp_path / "a.zip", files) if kind == "zip" else write_tar(tmp_path / "a.tar.gz", files)
    assert rejected(source, IMAGE_OPTIONS, match).field == "file"


def test_an_empty_archive_is_refused(tmp_path: Path) -> None:
    rejected(write_zip(tmp_path / "e.zip", {}), IMAGE_OPTIONS, "holds no images")
    rejected(write_tar(tmp_path / "e.tar", {}, "w"), IMAGE_OPTIONS, "holds no images")


def test_a_corrupt_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really a zip at all" * 10)
    rejected(tmp_path / "junk.zip", IMAGE_OPTIONS, "not a readable zip archive")
    (tmp_path / "junk.tar").write_bytes(b"not really a tar either" * 100)
    rejected(tmp_path / "junk.tar", IMAGE_OPTIONS, "not a readable zip or tar archive")
    whole = write_tar(tmp_path / "d.tar.gz", digit_pngs()).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    rejected(tmp_path / "cut.tar.gz", IMAGE_OPTIONS, "not a readable zip or tar archive")
    stored = bytearray(write_zip(tmp_path / "s.zip", digit_pngs(per_class=2), zipfile.ZIP_STORED).read_bytes())
    at = stored.index(b"IDAT") + 8
    stored[at] ^= 0xFF  # a member's bytes no longer match its CRC
    (tmp_path / "crc.zip").write_bytes(bytes(stored))
    rejected(tmp_path / "crc.zip", IMAGE_OPTIONS, r"archive entry '0/\d+.png' is corrupt")


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        (tarfile.SYMTYPE, r"entry '0/link.png' is a symbolic link \(to '/etc/passwd'\)"),
        (tarfile.LNKTYPE, r"entry '0/link.png' is a hard link"),
        (tarfile.CHRTYPE, r"entry '0/link.png' is not a file or folder"),
        (tarfile.FIFOTYPE, r"entry '0/link.png' is not a file or folder"),
    ],
)
def test_tar_links_and_devices_are_refused(tmp_path: Path, kind: bytes, match: str) -> None:
    source = write_tar(tmp_path / "l.tar", digit_pngs(per_class=2), "w", with_link(kind, "0/link.png", "/etc/passwd"))
    rejected(source, IMAGE_OPTIONS, match)


def test_a_zip_symlink_is_refused_even_among_skipped_files(tmp_path: Path) -> None:
    source = write_zip(tmp_path / "l.zip", digit_pngs(per_class=2))
    with zipfile.ZipFile(source, "a") as archive:
        info = zipfile.ZipInfo("notes/link.txt")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    rejected(source, IMAGE_OPTIONS, r"entry 'notes/link.txt' is a symbolic link")


def test_archive_bombs_are_refused_before_decompressing(tmp_path: Path) -> None:
    limits = IngestLimits(expanded_bytes=1 << 20, image_pixels=1 << 20)
    zeros = {"0/a.png": bytes(4 << 20), "1/b.png": b"x"}
    zip_bomb = write_zip(tmp_path / "z.zip", zeros)
    assert zip_bomb.stat().st_size < 20_000
    rejected(zip_bomb, IMAGE_OPTIONS, r"the archive would expand to 4\.0 MiB, over the limit of 1\.0 MiB", limits)
    rejected(write_tar(tmp_path / "z.tar.gz", zeros), IMAGE_OPTIONS, "the archive would expand to 4.0 MiB", limits)
    many = write_zip(tmp_path / "m.zip", digit_pngs(per_class=1))
    rejected(many, IMAGE_OPTIONS, "holds more than 5 entries", IngestLimits(1 << 20, 1 << 20, max_files=5))
    rejected(
        write_tar(tmp_path / "m.tar", digit_pngs(per_class=1), "w"),
        IMAGE_OPTIONS,
        "more than 5 entries",
        IngestLimits(1 << 20, 1 << 20, max_files=5),
    )


@pytest.mark.parametrize("entries", [3, 70_000])  # past 65,535 entries a zip has zip64's end record
def test_a_zips_entries_are_counted_before_zipfile_builds_them(tmp_path: Path, entries: int) -> None:
    with zipfile.ZipFile(tmp_path / "n.zip", "w", zipfile.ZIP_STORED) as archive:
        for i in range(entries):
            archive.writestr(f"{i}", b"")
        archive.comment = b"an end record with a comment"
    with open_zip(tmp_path / "n.zip", entries) as archive:
        assert len(archive.infolist()) == entries
    with pytest.raises(DatasetRejected, match=f"holds more than {entries - 1} entries"):
        open_zip(tmp_path / "n.zip", entries - 1)


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_huge_tar_headers_are_refused_before_they_are_read_whole(tmp_path: Path, tar_format: int) -> None:
    # 8 MiB of pax records or of a GNU long name, gzip-compressed to a few kilobytes
    info = tarfile.TarInfo("0/" + "a" * (8 << 20) + ".png")
    if tar_format == tarfile.PAX_FORMAT:
        info = tarfile.TarInfo("0/a.png")
        info.pax_headers = {"comment": "x" * (8 << 20)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tar_format) as archive:
        archive.addfile(info, io.BytesIO(b""))
    (tmp_path / "h.tar.gz").write_bytes(buffer.getvalue())
    assert len(buffer.getvalue()) < 100_000
    rejected(tmp_path / "h.tar.gz", IMAGE_OPTIONS, r"the archive's headers take more than \d+ bytes for one entry")


def test_images_expanding_past_the_limit_once_resized_are_refused(tmp_path: Path) -> None:
    source = write_zip(tmp_path / "d.zip", digit_pngs())
    limits = IngestLimits(expanded_bytes=1 << 20, image_pixels=1 << 20)
    rejected(
        source,
        IngestOptions("images", image_size=64, color="rgb"),
        r"the images once resized would expand to \d+ bytes, over the limit of 1048576 bytes",
        limits,
    )


def test_ingested_is_what_store_takes(tmp_path: Path) -> None:
    got = ingest(digits_npz(tmp_path / "d.npz"), IngestOptions("npz"), LIMITS)
    assert isinstance(got, Ingested)
    facts = store(got, tmp_path / "stored")
    assert sorted(p.name for p in (tmp_path / "stored").iterdir()) == ["data.npz", "samples.png"]
    assert facts["class_counts"]["train"] == np.bincount(got.splits.y_train).tolist()


# --- datasets registered by path -----------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "sets").mkdir(parents=True)
    (folder / "sets" / "my data.csv").write_text("a,label\n1,x\n")
    (tmp_path / "outside.csv").write_text("a,label\n1,x\n")
    return folder


def test_paths_and_file_uris_under_a_root_resolve(root: Path) -> None:
    target = root / "sets" / "my data.csv"
    assert resolve_under_roots(str(target), [root]) == target
    assert resolve_under_roots(target.as_uri(), [root]) == target
    assert resolve_under_roots("file://localhost" + target.as_uri()[len("file://") :], [root]) == target
    assert resolve_under_roots(f"file:{target}", [root]) == target
    (root / "sets" / "alias.csv").symlink_to(target)  # a link that stays inside the root is fine
    assert resolve_under_roots(str(root / "sets" / "alias.csv"), [root]) == target
    (root.parent / "link-to-root").symlink_to(root)  # roots are compared by their real paths
    assert resolve_under_roots(str(target), [root.parent / "link-to-root"]) == target


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("{root}/../outside.csv", r"has a '\.\.' part"),
        ("{root}/sets/../sets/my data.csv", r"has a '\.\.' part"),
        ("{root}/../outside.csv".replace("{root}", "file://{root}"), r"has a '\.\.' part"),
        ("{tmp}/outside.csv", "is not under the folders the server reads datasets from"),
        ("/etc/passwd", "is not under the folders"),
        ("{root}/sets/escape.csv", "is not under the folders"),
        ("{root}/sets/missing.csv", "no file at"),
        ("{root}/sets", "is not a file"),
        ("sets/my data.csv", "is relative"),
        ("http://example.com/data.csv", "only paths and file: URIs name datasets, not http: URIs"),
        ("s3://bucket/data.csv", "not s3: URIs"),
        ("file:///{root}/sets/my data.csv?x=1", "not a local file URI"),
        ("file://otherhost/data.csv", "not a local file URI"),
    ],
)
def test_paths_outside_the_roots_are_refused(root: Path, path: str, match: str) -> None:
    (root / "sets" / "escape.csv").symlink_to(root.parent / "outside.csv")
    with pytest.raises(DatasetRejected, match=match) as info:
        resolve_under_roots(path.format(root=root, tmp=root.parent), [root])
    assert info.value.field == "path"


def test_registering_by_path_is_off_without_roots(root: Path) -> None:
    with pytest.raises(DatasetRejected, match="registering by path is off: the server's admin sets NAS_DATA_ROOTS"):
        resolve_under_roots(str(root / "sets" / "my data.csv"), [])

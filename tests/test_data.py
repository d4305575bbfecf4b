from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from nas.data.digits import Digits
from nas.data.idx import read_idx
from nas.data.mnist import FILES, MNIST


def write_idx(path: Path, type_code: int, shape: tuple[int, ...], payload: bytes) -> Path:
    header = bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    path.write_bytes(gzip.compress(header + payload))
    return path


# --- IDX ---------------------------------------------------------------------------------------


def test_idx_reads_values_and_shape(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", 0x08, (2, 3, 4), values.tobytes())), values)
    big_endian = np.array([-5, 70000], dtype=">i4")
    assert read_idx(write_idx(tmp_path / "b.gz", 0x0C, (2,), big_endian.tobytes())).tolist() == [-5, 70000]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "bad magic number empty"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number 01000801"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "declares no dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "header truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4) + b"\x00\x01\x02", r"IDX data is 3 bytes, header shape \[4\] needs 4"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x00\x01\x02", r"IDX data is 3 bytes, header shape \[2\] needs 2"),
    ],
)
def test_idx_rejects_malformed_content(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_rejects_files_that_are_not_gzip_or_are_cut_short(tmp_path: Path) -> None:
    plain = tmp_path / "plain.gz"
    plain.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_idx(plain)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 1000) + bytes(1000))[:-20])
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_idx(cut)


# --- MNIST -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(data_dir: Path):
    return MNIST(MNIST.Params()).load(data_dir)


def test_mnist_loads_the_standard_splits(mnist) -> None:
    assert mnist.x_train.shape == (60_000, 1, 28, 28) and mnist.x_train.dtype == np.float32
    assert mnist.x_test.shape == (10_000, 1, 28, 28) and mnist.x_test.dtype == np.float32
    assert mnist.y_train.dtype == np.int64 and mnist.y_test.dtype == np.int64
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    assert MNIST(MNIST.Params(train_limit=5)).shape() == (mnist.input_shape, mnist.num_classes)
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the original order
    assert mnist.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert set(np.unique(mnist.y_train)) == set(range(10))
    # Normalised with the training set's own mean and std.
    assert abs(float(mnist.x_train.mean())) < 1e-3 and abs(float(mnist.x_train.std()) - 1) < 1e-3
    assert np.isclose(mnist.x_train.min(), -0.1307 / 0.3081)


def test_mnist_limits_take_the_first_examples(mnist, data_dir: Path) -> None:
    small = MNIST(MNIST.Params(train_limit=500, test_limit=100)).load(data_dir)
    assert np.array_equal(small.x_train, mnist.x_train[:500]) and np.array_equal(small.y_train, mnist.y_train[:500])
    assert np.array_equal(small.x_test, mnist.x_test[:100]) and np.array_equal(small.y_test, mnist.y_test[:100])


def test_mnist_params_are_validated() -> None:
    with pytest.raises(ValidationError):
        MNIST.Params(train_limit=0)
    with pytest.raises(ValidationError):
        MNIST.Params(test_limit=10_001)
    with pytest.raises(ValidationError):
        MNIST.Params(download=True)


def test_shape_needs_no_data_files() -> None:
    assert MNIST(MNIST.Params()).shape() == ((1, 28, 28), 10)  # no data folder is given: shape() reads nothing
    assert Digits(Digits.Params(test_fraction=0.5)).shape() == ((1, 8, 8), 10)


def test_mnist_names_missing_files_and_where_they_belong(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / FILES["train_labels"], 0x08, (1,), b"\x00")
    dataset = MNIST(MNIST.Params())
    for call in (dataset.check_available, dataset.load):
        with pytest.raises(ValueError) as info:
            call(tmp_path)
        message = str(info.value)
        assert str(tmp_path / "mnist") in message and "NAS_DATA_DIR" in message
        missing = message.split(": ", 1)[1].split(". ", 1)[0]
        assert FILES["train_labels"] not in missing
        for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            assert name in missing


def _fake_mnist(folder: Path, train_labels: list[int], train_images_shape: tuple[int, ...] = (3, 28, 28)) -> None:
    """Structurally valid IDX files for MNIST, except for what the arguments break; 2 blank test digits."""
    folder.mkdir(parents=True)
    for split, shape, labels in (("train", train_images_shape, train_labels), ("test", (2, 28, 28), [0, 0])):
        write_idx(folder / FILES[f"{split}_images"], 0x08, shape, bytes(int(np.prod(shape))))
        write_idx(folder / FILES[f"{split}_labels"], 0x08, (len(labels),), bytes(labels))


def test_mnist_rejects_inconsistent_files(tmp_path: Path) -> None:
    dataset = MNIST(MNIST.Params())
    _fake_mnist(tmp_path / "a" / "mnist", [1, 2])
    with pytest.raises(ValueError, match="3 train images but 2 labels"):
        dataset.load(tmp_path / "a")
    _fake_mnist(tmp_path / "b" / "mnist", [1, 2, 10])
    with pytest.raises(ValueError, match="label 10 is outside 0..9"):
        dataset.load(tmp_path / "b")
    _fake_mnist(tmp_path / "c" / "mnist", [1, 2, 3], train_images_shape=(3, 28, 27))
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        dataset.load(tmp_path / "c")


# --- digits ------------------------------------------------------------------------------------


def test_digits_split_is_stratified_scaled_and_seeded() -> None:
    splits = Digits(Digits.Params()).load(Path("unused"))
    assert splits.x_train.shape == (1347, 1, 8, 8) and splits.x_test.shape == (450, 1, 8, 8)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int64
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert Digits(Digits.Params()).shape() == (splits.input_shape, splits.num_classes)
    assert splits.x_train.min() == 0.0 and splits.x_train.max() == 1.0
    # Stratified: every class is held out in proportion to its size, to within one example.
    all_labels = np.concatenate([splits.y_train, splits.y_test])
    expected = np.bincount(all_labels) * 0.25
    assert np.all(np.abs(np.bincount(splits.y_test) - expected) <= 1)

    again = Digits(Digits.Params()).load(Path("unused"))
    other = Digits(Digits.Params(split_seed=1, test_fraction=0.5)).load(Path("unused"))
    assert np.array_equal(again.x_test, splits.x_test)
    assert len(other.y_test) == 899 and not np.array_equal(other.y_test[:450], splits.y_test)


def test_digits_params_are_validated() -> None:
    for bad in ({"test_fraction": 0.0}, {"test_fraction": 1.0}, {"split_seed": -1}, {"seed": 1}):
        with pytest.raises(ValidationError):
            Digits.Params(**bad)

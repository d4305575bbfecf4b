"""Fashion-MNIST, CIFAR-10 (from files in their real formats, written here) and the synthetic dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from nas import registry
from nas.data.cifar10 import CIFAR10, MEAN, STD, TEST_FILES, TRAIN_FILES
from nas.data.fashion_mnist import FashionMNIST
from nas.data.mnist import FILES
from nas.data.synthetic import Synthetic
from nas.specs import JobSpec
from tests.test_data import write_idx

# --- Fashion-MNIST -----------------------------------------------------------------------------


def fake_fashion(folder: Path, train: int = 5, test: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for split, n in (("train", train), ("test", test))}
    for split, n in (("train", train), ("test", test)):
        write_idx(folder / FILES[f"{split}_images"], 0x08, (n, 28, 28), images[split].tobytes())
        write_idx(folder / FILES[f"{split}_labels"], 0x08, (n,), bytes(i % 10 for i in range(n)))
    return images["train"], images["test"]


def test_fashion_mnist_reads_its_folder_and_normalises_with_its_own_statistics(tmp_path: Path) -> None:
    train, test = fake_fashion(tmp_path / "fashion_mnist")
    data = FashionMNIST(FashionMNIST.Params()).load(tmp_path)
    assert data.x_train.shape == (5, 1, 28, 28) and data.x_train.dtype == np.float32
    assert data.y_train.tolist() == [0, 1, 2, 3, 4] and data.y_test.tolist() == [0, 1, 2]
    assert (data.input_shape, data.num_classes) == ((1, 28, 28), 10)
    expected = (train.astype(np.float64) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(data.x_train[:, 0], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(data.x_test[:, 0], (test / 255 - 0.2860) / 0.3530, rtol=0, atol=1e-5)

    limited = FashionMNIST(FashionMNIST.Params(train_limit=2, test_limit=1)).load(tmp_path)
    assert len(limited.x_train) == 2 and len(limited.y_test) == 1
    assert np.array_equal(limited.x_train, data.x_train[:2])


def test_fashion_mnist_names_missing_files_and_where_to_get_them(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()  # MNIST's folder does not count
    with pytest.raises(ValueError) as info:
        FashionMNIST(FashionMNIST.Params()).load(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "fashion_mnist") in message and "NAS_DATA_DIR" in message
    assert "zalandoresearch/fashion-mnist" in message and "train-images-idx3-ubyte.gz" in message


def test_fashion_mnist_refuses_a_malformed_file(tmp_path: Path) -> None:
    fake_fashion(tmp_path / "fashion_mnist")
    write_idx(tmp_path / "fashion_mnist" / FILES["train_labels"], 0x08, (5,), bytes([0, 1, 2, 3, 10]))
    with pytest.raises(ValueError, match="label 10 is outside 0..9"):
        FashionMNIST(FashionMNIST.Params()).load(tmp_path)


# --- CIFAR-10 ----------------------------------------------------------------------------------


def write_cifar(folder: Path, records: int = 3, test_records: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Six batch files in the real binary format: per record a label byte, then the R, G and B planes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    written = {}
    for i, name in enumerate(TRAIN_FILES + TEST_FILES):
        n = test_records if name in TEST_FILES else records
        labels = ((np.arange(n) + i) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        (folder / name).write_bytes(b"".join(bytes([label]) + image.tobytes() for label, image in zip(labels, images)))
        written[name] = (labels, images)
    return written


def normalised(images: np.ndarray) -> np.ndarray:
    return (images / 255 - np.array(MEAN).reshape(1, 3, 1, 1)) / np.array(STD).reshape(1, 3, 1, 1)


def test_cifar10_reads_the_binary_format(tmp_path: Path) -> None:
    written = write_cifar(tmp_path / "cifar10")
    data = CIFAR10(CIFAR10.Params()).load(tmp_path)
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_train.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.x_test.shape == (2, 3, 32, 32)
    assert (data.input_shape, data.num_classes) == ((3, 32, 32), 10) == CIFAR10(CIFAR10.Params()).shape()
    train_labels = np.concatenate([written[name][0] for name in TRAIN_FILES])
    train_images = np.concatenate([written[name][1] for name in TRAIN_FILES])
    assert data.y_train.tolist() == train_labels.tolist()
    np.testing.assert_allclose(data.x_train, normalised(train_images), atol=1e-5)
    np.testing.assert_allclose(data.x_test, normalised(written["test_batch.bin"][1]), atol=1e-5)
    # channel planes in order: a pure red pixel is high in channel 0 only
    red = bytearray((tmp_path / "cifar10" / "test_batch.bin").read_bytes())
    red[1 : 1 + 3072] = bytes([255] * 1024 + [0] * 2048)
    (tmp_path / "cifar10" / "test_batch.bin").write_bytes(bytes(red))
    first = CIFAR10(CIFAR10.Params()).load(tmp_path).x_test[0]
    assert first[0].min() > 1.9 and first[1].max() < -1.9 and first[2].max() < -1.7


def test_cifar10_subset_takes_the_first_records_across_files(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar10")
    full = CIFAR10(CIFAR10.Params()).load(tmp_path)
    subset = CIFAR10(CIFAR10.Params(train_limit=4, test_limit=1)).load(tmp_path)
    assert np.array_equal(subset.x_train, full.x_train[:4]) and subset.y_train.tolist() == full.y_train[:4].tolist()
    assert len(subset.x_test) == 1


@pytest.mark.parametrize("folder", ["cifar-10-batches-bin", "cifar10/cifar-10-batches-bin"])
def test_cifar10_finds_the_extracted_archive_folder(tmp_path: Path, folder: str) -> None:
    write_cifar(tmp_path / folder)
    assert CIFAR10(CIFAR10.Params()).folder(tmp_path) == tmp_path / folder
    CIFAR10(CIFAR10.Params()).check_available(tmp_path)
    assert len(CIFAR10(CIFAR10.Params()).load(tmp_path).y_train) == 15


def test_cifar10_says_which_files_are_missing_and_where_to_get_them(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "data_batch_3.bin").unlink()
    for call in (CIFAR10(CIFAR10.Params()).check_available, CIFAR10(CIFAR10.Params()).load):
        with pytest.raises(ValueError) as info:
            call(tmp_path)
        message = str(info.value)
        assert f"missing from {tmp_path / 'cifar10'}: data_batch_3.bin (also looked in" in message
        assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and "NAS_DATA_DIR" in message
        assert "Nothing is downloaded" in message
    with pytest.raises(ValueError, match="data_batch_1.bin, data_batch_2.bin"):
        CIFAR10(CIFAR10.Params()).check_available(tmp_path / "empty")


def test_cifar10_refuses_malformed_files_naming_them(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar10")
    path = tmp_path / "cifar10" / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"data_batch_2\.bin: 9218 bytes is not a whole number of 3073-byte"):
        CIFAR10(CIFAR10.Params()).load(tmp_path)
    write_cifar(tmp_path / "cifar10")
    raw = bytearray(path.read_bytes())
    raw[3073] = 12
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"data_batch_2\.bin: label 12 is outside 0..9"):
        CIFAR10(CIFAR10.Params()).load(tmp_path)


def test_cifar10_params_are_validated() -> None:
    for params in ({"train_limit": 0}, {"train_limit": 50_001}, {"test_limit": 10_001}, {"download": True}):
        with pytest.raises(ValidationError):
            CIFAR10.Params(**params)


# --- synthetic ---------------------------------------------------------------------------------


def test_synthetic_data_is_seeded_shaped_and_balanced() -> None:
    params = {"input_shape": [3, 4, 5], "num_classes": 4, "train_size": 40, "test_size": 10, "seed": 3}
    data = Synthetic(Synthetic.Params(**params)).load(Path("/nonexistent"))
    again = Synthetic(Synthetic.Params(**params)).load(Path("/nonexistent"))
    other = Synthetic(Synthetic.Params(**{**params, "seed": 4})).load(Path("/nonexistent"))
    assert data.x_train.shape == (40, 3, 4, 5) and data.x_test.shape == (10, 3, 4, 5)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert (data.input_shape, data.num_classes) == ((3, 4, 5), 4) == Synthetic(Synthetic.Params(**params)).shape()
    assert np.array_equal(data.x_train, again.x_train) and np.array_equal(data.y_test, again.y_test)
    assert not np.array_equal(data.x_train, other.x_train)
    assert np.bincount(data.y_train).tolist() == [10, 10, 10, 10]
    assert sorted(np.bincount(data.y_test).tolist()) == [2, 2, 3, 3]


def test_synthetic_classes_are_learnable_and_noise_sets_the_difficulty() -> None:
    def nearest_mean_accuracy(noise: float) -> float:
        data = Synthetic(Synthetic.Params(noise=noise, train_size=500, test_size=500)).load(Path("."))
        means = np.stack([data.x_train[data.y_train == c].mean(axis=0) for c in range(10)]).reshape(10, -1)
        distances = ((data.x_test.reshape(len(data.x_test), 1, -1) - means) ** 2).sum(axis=-1)
        return float((distances.argmin(axis=1) == data.y_test).mean())

    assert nearest_mean_accuracy(1.0) > 0.95
    assert nearest_mean_accuracy(8.0) < 0.6


def test_synthetic_params_are_validated_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="at most 50000000 are generated"):
        Synthetic.Params(input_shape=[3, 256, 256], train_size=1000)
    for params in ({"num_classes": 1}, {"input_shape": []}, {"input_shape": [1, 2, 3, 4, 5]}, {"noise": -1.0}, {"size": 5}):
        with pytest.raises(ValidationError):
            Synthetic.Params(**params)


# --- registration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("fashion_mnist", "nas.data.fashion_mnist.FashionMNIST"),
        ("cifar10", "nas.data.cifar10.CIFAR10"),
        ("synthetic", "nas.data.synthetic.Synthetic"),
    ],
)
def test_datasets_are_registered_with_described_params(name: str, path: str) -> None:
    cls = registry.datasets.get(name)
    assert f"{cls.__module__}.{cls.__qualname__}" == path
    entry = next(e for e in registry.datasets.describe() if e["name"] == name)
    assert entry["description"] and entry["params_schema"]["additionalProperties"] is False
    assert all(prop.get("description") for prop in entry["params_schema"]["properties"].values())


def test_a_job_on_synthetic_data_is_accepted_and_its_shape_reaches_the_space() -> None:
    spec = JobSpec(
        search_space={"name": "sparse_cnn"},
        dataset={"name": "synthetic", "params": {"input_shape": [3, 16, 16]}},
        sparsifier={"name": "magnitude"},
    )
    assert spec.dataset.params["input_shape"] == [3, 16, 16]
    Synthetic(Synthetic.Params()).check_available(Path("/nonexistent"))  # nothing to fetch


def test_importing_the_new_plugins_imports_no_torch_or_numpy() -> None:
    code = (
        "import sys\n"
        "import nas.data.fashion_mnist, nas.data.cifar10, nas.data.synthetic\n"
        "import search_spaces.sparse_cnn, search_spaces.sparse_rnn, nas.sparse.magnitude\n"
        "heavy = sorted({'torch', 'optuna', 'numpy', 'sklearn'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])

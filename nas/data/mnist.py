"""MNIST from the four standard IDX ``.gz`` files under ``<data_dir>/mnist``; never downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from nas.data import DataSplits, Dataset
from nas.data.base import files_missing

if TYPE_CHECKING:
    import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MEAN, STD = 0.1307, 0.3081  # of the training pixels scaled to [0, 1]


class MNIST(Dataset):
    """60,000 training and 10,000 test 28x28 handwritten digits, normalised with the usual mean and std.

    A dataset in MNIST's files and format (Fashion-MNIST) subclasses it with its own folder and statistics.
    """

    folder: ClassVar[str] = "mnist"  # under the data directory
    mean: ClassVar[float] = MEAN
    std: ClassVar[float] = STD

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        train_limit: int | None = Field(
            None, ge=1, le=60_000, description="use only the first N training examples (quick runs); all if null"
        )
        test_limit: int | None = Field(
            None, ge=1, le=10_000, description="use only the first N test examples; all if null"
        )

    params: Params

    def shape(self) -> tuple[tuple[int, ...], int]:
        return (1, 28, 28), 10

    def check_available(self, data_dir: Path) -> None:
        folder = Path(data_dir) / self.folder
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise files_missing(
                "MNIST", folder, missing, "copy the standard IDX files (from a mirror of "
                "http://yann.lecun.com/exdb/mnist/) into that folder on the server, or start the server with "
                f"NAS_DATA_DIR at the folder that contains {self.folder}/",
            )

    def load(self, data_dir: Path) -> DataSplits:
        self.check_available(data_dir)
        folder = Path(data_dir) / self.folder
        x_train, y_train = read_split(folder, "train", self.params.train_limit, self.mean, self.std)
        x_test, y_test = read_split(folder, "test", self.params.test_limit, self.mean, self.std)
        input_shape, num_classes = self.shape()
        return DataSplits(x_train, y_train, x_test, y_test, input_shape=input_shape, num_classes=num_classes)


def read_split(
    folder: Path, split: str, limit: int | None, mean: float = MEAN, std: float = STD
) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` ("train" or "test") of the IDX files in ``folder``, checked: images as float32
    ``(N, 1, 28, 28)`` normalised as ``(pixel / 255 - mean) / std``, labels as int64 in 0..9."""
    import numpy as np

    from nas.data.idx import read_idx

    images_path, labels_path = folder / FILES[f"{split}_images"], folder / FILES[f"{split}_labels"]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} is outside 0..9")
    images, labels = images[:limit], labels[:limit]  # slice before converting: a limit keeps memory small
    x = (images.astype(np.float32) / 255.0 - mean) / std
    return x[:, None, :, :], labels.astype(np.int64)

"""CIFAR-10 from the standard binary files (``data_batch_1.bin`` .. ``_5.bin``, ``test_batch.bin``); never downloaded.

Each file holds records of 3,073 bytes: the label (0..9), then the 32x32 red, green and blue
planes, row by row. The files are looked for in ``<data_dir>/cifar10/``, then in
``<data_dir>/cifar-10-batches-bin/`` and ``<data_dir>/cifar10/cifar-10-batches-bin/`` (where the
official archive's folder lands when it is extracted there).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from nas.data import DataSplits, Dataset
from nas.data.base import files_missing

if TYPE_CHECKING:
    import numpy as np

TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
FOLDERS = ("cifar10", "cifar-10-batches-bin", "cifar10/cifar-10-batches-bin")
RECORD_BYTES = 1 + 3 * 32 * 32
MEAN = (0.4914, 0.4822, 0.4465)  # per channel, of the training pixels scaled to [0, 1]
STD = (0.2470, 0.2435, 0.2616)
SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"


class CIFAR10(Dataset):
    """50,000 training and 10,000 test 32x32 colour images in 10 classes, normalised per channel."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        train_limit: int | None = Field(
            None, ge=1, le=50_000, description="use only the first N training examples (a subset for quick runs); all if null"
        )
        test_limit: int | None = Field(None, ge=1, le=10_000, description="use only the first N test examples; all if null")

    params: Params

    def shape(self) -> tuple[tuple[int, ...], int]:
        return (3, 32, 32), 10

    def folder(self, data_dir: Path) -> Path | None:
        """The first of the searched folders that holds all six files, or ``None``."""
        for name in FOLDERS:
            folder = Path(data_dir) / name
            if all((folder / file).is_file() for file in TRAIN_FILES + TEST_FILES):
                return folder
        return None

    def check_available(self, data_dir: Path) -> None:
        if self.folder(data_dir) is not None:
            return
        places = [Path(data_dir) / name for name in FOLDERS]
        partial = next((place for place in places if place.is_dir()), places[0])
        missing = [file for file in TRAIN_FILES + TEST_FILES if not (partial / file).is_file()]
        also = ", ".join(str(p) for p in places if p != partial)
        raise files_missing(
            "CIFAR-10", partial, [f"{', '.join(missing)} (also looked in {also})"],
            f"get the binary version (cifar-10-binary.tar.gz) from {SOURCE} and extract it into the server's "
            "NAS_DATA_DIR (it creates cifar-10-batches-bin/), or copy its six .bin files into NAS_DATA_DIR/cifar10/",
        )

    def load(self, data_dir: Path) -> DataSplits:
        self.check_available(data_dir)
        folder = self.folder(data_dir)
        assert folder is not None
        x_train, y_train = _read_batches([folder / f for f in TRAIN_FILES], self.params.train_limit)
        x_test, y_test = _read_batches([folder / f for f in TEST_FILES], self.params.test_limit)
        input_shape, num_classes = self.shape()
        return DataSplits(x_train, y_train, x_test, y_test, input_shape=input_shape, num_classes=num_classes)


def _read_batches(paths: list[Path], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` records (all if ``None``) of ``paths`` in order, as normalised float32 images and int64 labels.

    Reads only the bytes it needs; ``ValueError`` names a file whose size or labels are wrong.
    """
    import numpy as np

    images, labels = [], []
    remaining = limit
    for path in paths:
        size = path.stat().st_size
        if size == 0 or size % RECORD_BYTES:
            raise ValueError(f"{path}: {size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records")
        count = size // RECORD_BYTES if remaining is None else min(remaining, size // RECORD_BYTES)
        with path.open("rb") as f:
            records = np.frombuffer(f.read(count * RECORD_BYTES), dtype=np.uint8).reshape(count, RECORD_BYTES)
        if count and records[:, 0].max() > 9:
            raise ValueError(f"{path}: label {int(records[:, 0].max())} is outside 0..9; not a CIFAR-10 batch")
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(count, 3, 32, 32))
        if remaining is not None:
            remaining -= count
            if remaining == 0:
                break
    x = np.concatenate(images).astype(np.float32) / 255.0
    x -= np.array(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    x /= np.array(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return x, np.concatenate(labels)

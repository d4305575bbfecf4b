"""Generated data for tests and benchmarks: seeded Gaussian clusters, one per class, of any input shape."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.data import DataSplits, Dataset

MAX_VALUES = 50_000_000  # (train_size + test_size) * input size: 200 MB of float32


class Synthetic(Dataset):
    """Seeded Gaussian class clusters of any shape: no files, any size, the same data for the same params."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        input_shape: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
            [1, 8, 8], min_length=1, max_length=4, description="shape of one example, e.g. [1, 28, 28] or [3, 32, 32]"
        )
        num_classes: int = Field(10, ge=2, le=1000, description="number of classes")
        train_size: int = Field(1000, ge=1, le=1_000_000, description="training examples")
        test_size: int = Field(250, ge=1, le=1_000_000, description="test examples")
        noise: float = Field(
            1.0, ge=0.0, le=100.0, description="standard deviation of each example around its class mean (the means have 1)"
        )
        seed: int = Field(0, ge=0, lt=2**32, description="seed of the class means, labels and noise")

        @model_validator(mode="after")
        def _fits_in_memory(self) -> Synthetic.Params:
            values = (self.train_size + self.test_size) * math.prod(self.input_shape)
            if values > MAX_VALUES:
                raise ValueError(
                    f"train_size + test_size times the input size is {values} values; at most {MAX_VALUES} are generated"
                )
            return self

    params: Params

    def shape(self) -> tuple[tuple[int, ...], int]:
        return tuple(self.params.input_shape), self.params.num_classes

    def load(self, data_dir: Path) -> DataSplits:
        """Class means drawn from N(0, 1) per value; examples are a mean plus N(0, noise²) noise.

        Labels cycle through the classes before shuffling, so every class is as frequent as it can
        be in both splits. ``data_dir`` is unused.
        """
        import numpy as np

        p = self.params
        input_shape, num_classes = self.shape()
        rng = np.random.default_rng(p.seed)
        means = rng.standard_normal((num_classes, *input_shape), dtype=np.float32)

        def split(size: int) -> tuple[np.ndarray, np.ndarray]:
            labels = rng.permutation(np.arange(size) % num_classes).astype(np.int64)
            noise = rng.standard_normal((size, *input_shape), dtype=np.float32)
            return means[labels] + np.float32(p.noise) * noise, labels

        x_train, y_train = split(p.train_size)
        x_test, y_test = split(p.test_size)
        return DataSplits(x_train, y_train, x_test, y_test, input_shape=input_shape, num_classes=num_classes)

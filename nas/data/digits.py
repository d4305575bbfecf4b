"""scikit-learn's bundled 8x8 handwritten digits: tiny, offline, trains in a second."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from nas.data import DataSplits, Dataset


class Digits(Dataset):
    """1,797 8x8 grey-scale digits (scikit-learn's load_digits), split stratified into train/test."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        # At 0.05 the test split still holds every class several times; above 0.9 too little is left to train.
        test_fraction: float = Field(0.25, ge=0.05, le=0.9, description="fraction of the examples held out for testing")
        split_seed: int = Field(0, ge=0, lt=2**32, description="seed of the stratified train/test split")

    params: Params

    def shape(self) -> tuple[tuple[int, ...], int]:
        return (1, 8, 8), 10

    def load(self, data_dir: Path) -> DataSplits:
        """The digits scaled to [0, 1] (pixels are 0..16); ``data_dir`` is unused, they ship with scikit-learn."""
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
        y = digits.target.astype(np.int64)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=self.params.test_fraction, random_state=self.params.split_seed, stratify=y
        )
        input_shape, num_classes = self.shape()
        return DataSplits(x_train, y_train, x_test, y_test, input_shape=input_shape, num_classes=num_classes)

"""The dataset contract: load train/test arrays from a caller-given data folder, never downloading."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DataSplits:
    """Train and test arrays: inputs float32 ``(N, *input_shape)``, labels int64 ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int


class Dataset(ABC):
    """Base class of registered datasets; ``Params`` holds their options."""

    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def check_available(self, data_dir: Path) -> None:
        """Raise ``ValueError`` saying which files are missing where, and how to get them.

        Lets a server reject a job before any worker starts; bundled datasets need nothing.
        """

    @abstractmethod
    def shape(self) -> tuple[tuple[int, ...], int]:
        """``(input_shape, num_classes)`` without loading anything, for checking a job at submission."""

    @abstractmethod
    def load(self, data_dir: Path) -> DataSplits:
        """The splits, read from ``data_dir``."""

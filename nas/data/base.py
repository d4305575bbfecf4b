"""The dataset contract: load train/test arrays from a caller-given data folder, never downloading.

The validation split that selection ranks on is carved from the training arrays here, once for
every dataset (:func:`validation_split`): datasets themselves only know train and test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    import numpy as np

    from nas.specs import JobSpec


@dataclass(frozen=True)
class DataSplits:
    """Train and test arrays: inputs float32 ``(N, *input_shape)``, labels int64 ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class ValidationSplit:
    """Which training examples train (``train``) and which validate (``val``): sorted index arrays."""

    train: np.ndarray
    val: np.ndarray
    stratified: bool  # False where a class had too few examples to appear on both sides


def validation_split(y_train: np.ndarray, fraction: float, seed: int) -> ValidationSplit:
    """Hold ``fraction`` of the training examples out for validation, stratified by class, drawn by ``seed``.

    Selection ranks trials on this split so that the test split stays unseen until it is reported.
    Stratified (scikit-learn's ``train_test_split``) so that every class keeps its share on both
    sides; where that is impossible (a class with a single example, or fewer validation examples
    than classes) the split is drawn unstratified, with the same seed, and says so in ``stratified``.
    At least one example is held out and at least one trains.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    n = len(y_train)
    if n < 2:
        raise ValueError(f"a validation split needs at least 2 training examples; the dataset has {n}")
    n_val = min(max(1, round(fraction * n)), n - 1)
    counts = np.bincount(y_train)
    present = counts[counts > 0]
    stratified = bool(present.min() >= 2 and min(n_val, n - n_val) >= len(present))
    train, val = train_test_split(
        np.arange(n), test_size=n_val, random_state=seed, stratify=y_train if stratified else None
    )
    return ValidationSplit(np.sort(train), np.sort(val), stratified)


def files_missing(what: str, folder: Path, missing: list[str], how: str) -> ValueError:
    """The error for a dataset whose files are not where the server reads them: which, where, and how to
    put them there. Clients read it too, so it says that only the server's ``NAS_DATA_DIR`` matters."""
    return ValueError(
        f"{what} files missing from {folder}: {', '.join(missing)}. Nothing is downloaded: {how}. "
        f"The server reads datasets from its own NAS_DATA_DIR; the client's environment plays no part."
    )


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

    def check_spec(self, spec: JobSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """``(location in the spec, why)`` for each part of ``spec`` this dataset cannot serve; each becomes
        a 422 there. The default: none (a dataset of examples serves every space that takes its shape)."""
        return []

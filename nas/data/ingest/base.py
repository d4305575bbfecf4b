"""What reading a user's dataset takes and gives: its options, its limits, its result, its refusal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas.data.base import DataSplits

if TYPE_CHECKING:
    from nas.settings import Settings

FORMATS = ("npz", "csv", "parquet", "images")
COLORS = ("grayscale", "rgb")
# Smaller than 4 pixels a side no convolution space has room; past 512 one image alone is a megapixel
# per channel, and a search runs thousands of trials over the whole set.
IMAGE_SIZES = (4, 512)
# Digits' bounds: at 0.05 the test split still holds every class; past 0.9 too little is left to train.
TEST_FRACTIONS = (0.05, 0.9)


class DatasetRejected(ValueError):
    """A dataset the service won't take; the message names the problem for the user.

    ``field`` is the form field the problem is in (``"file"``, ``"label_column"``, ``"path"``, ...),
    or ``None`` when it is in no one field.
    """

    def __init__(self, message: str, field: str | None = "file") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[type[DatasetRejected], tuple[str, str | None]]:
        # Ingesting runs in a worker process: the field must survive the trip back.
        return type(self), (self.message, self.field)


@dataclass(frozen=True)
class IngestOptions:
    """How to read one upload; refused at construction (:class:`DatasetRejected`) when out of range.

    ``label_column`` names the label of a table (CSV, Parquet) and is required there; ``image_size``
    (the side of the square images are resized to) and ``color`` apply to image archives;
    ``test_fraction`` and ``split_seed`` shape the stratified split made when the upload has no
    test split of its own.
    """

    format: str
    label_column: str | None = None
    image_size: int = 32
    color: str = "rgb"
    test_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.label_column == "":  # a form's empty field: not given
            object.__setattr__(self, "label_column", None)
        if self.format not in FORMATS:
            raise DatasetRejected(f"unknown format {self.format!r}; the formats are {', '.join(FORMATS)}")
        if self.format in ("csv", "parquet"):
            if not self.label_column:
                raise DatasetRejected(
                    f"a {self.format} table needs label_column: the column holding the labels", "label_column"
                )
        elif self.label_column is not None:
            raise DatasetRejected(
                f"label_column applies to csv and parquet tables, not to {self.format}", "label_column"
            )
        low, high = IMAGE_SIZES
        if not _is_int(self.image_size) or not low <= self.image_size <= high:
            raise DatasetRejected(
                f"image_size must be an integer from {low} to {high}, not {self.image_size!r}", "image_size"
            )
        if self.color not in COLORS:
            raise DatasetRejected(f"color must be one of {', '.join(COLORS)}, not {self.color!r}", "color")
        low_f, high_f = TEST_FRACTIONS
        fraction = self.test_fraction
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not low_f <= fraction <= high_f:
            raise DatasetRejected(f"test_fraction must be from {low_f} to {high_f}, not {fraction!r}", "test_fraction")
        if not _is_int(self.split_seed) or not 0 <= self.split_seed < 2**32:
            raise DatasetRejected(
                f"split_seed must be an integer from 0 to 2**32 - 1, not {self.split_seed!r}", "split_seed"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class IngestLimits:
    """How far one upload may expand: decompressed bytes (archive members, arrays), the pixels of one
    image (Pillow's decompression-bomb guard), the entries of one archive."""

    expanded_bytes: int
    image_pixels: int
    max_files: int = 1_000_000

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLimits:
        """The limits a server's :class:`~nas.settings.Settings` set."""
        return cls(expanded_bytes=settings.limit_dataset_expanded_bytes, image_pixels=settings.limit_image_pixels)

    def check_expanded(self, nbytes: int, what: str) -> None:
        """Refuse ``what`` once it would take more than :attr:`expanded_bytes`."""
        if nbytes > self.expanded_bytes:
            size, limit = _size(nbytes), _size(self.expanded_bytes)
            if size == limit:  # rounded alike: only the exact counts show the difference
                size, limit = f"{nbytes} bytes", f"{self.expanded_bytes} bytes"
            raise DatasetRejected(
                f"{what} would expand to {size}, over the limit of {limit} (NAS_LIMIT_DATASET_EXPANDED_BYTES)"
            )


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} bytes"
    exponent = min(int(math.log(nbytes, 1024)), 4)
    return f"{nbytes / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[exponent - 1]}"


@dataclass
class Ingested:
    """A dataset read, checked and split, ready to store.

    ``splits`` hold float32 inputs, standardised with the training split's statistics, and int64
    labels ``0..C-1`` indexing ``class_names``. ``summary`` (JSON-able) says how the inputs were made
    from the upload, so that a user can do the same to the inputs of a deployed model: for tables
    ``columns`` (per column: ``name``, ``kind`` and either ``mean``/``std`` or ``categories``) and
    ``features`` (the input's names after one-hot encoding); for images and arrays ``mean`` and
    ``std`` per channel (or per feature), images being scaled by ``scale`` (1/255) first; always
    ``split``, the seed and fraction of the split made here, or ``{"given": true}``.
    """

    splits: DataSplits
    class_names: list[str]
    test_given: bool
    summary: dict[str, Any]

"""Small dataset files of every upload format, written for the SDK and CLI tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

ROWS = 60
FEATURES = 8
CLASSES = 3


def blobs(rows: int = ROWS, features: int = FEATURES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``CLASSES`` classes of equal size, each a shifted Gaussian blob: ``(x float32, y int64)``."""
    y = np.arange(rows) % CLASSES
    x = np.random.default_rng(seed).normal(size=(rows, features)) + y[:, None]
    return x.astype(np.float32), y.astype(np.int64)


def npz_file(path: Path, **arrays: np.ndarray) -> Path:
    """``arrays`` (default: :func:`blobs` as ``x``, ``y``) in an uncompressed ``.npz``."""
    if not arrays:
        x, y = blobs()
        arrays = {"x": x, "y": y}
    np.savez(path, **arrays)
    return path


def csv_file(path: Path, label_column: str = "species") -> Path:
    """:func:`blobs` as a table with a string label column."""
    x, y = blobs()
    header = ",".join([*(f"f{i}" for i in range(FEATURES)), label_column])
    rows = [",".join([*(f"{v:.5f}" for v in row), f"kind-{label}"]) for row, label in zip(x, y)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def image_zip(path: Path, per_class: int = 6, side: int = 20) -> Path:
    """Colour PNGs in the ImageFolder layout, one folder per class (``red``, ``blue``)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for name, channel in (("red", 0), ("blue", 2)):
            for i in range(per_class):
                pixels = rng.integers(0, 60, size=(side, side, 3), dtype=np.uint8)
                pixels[..., channel] += 180
                png = io.BytesIO()
                Image.fromarray(pixels, "RGB").save(png, format="PNG")
                archive.writestr(f"{name}/{i}.png", png.getvalue())
    return path

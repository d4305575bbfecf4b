"""A stored dataset's folder: the canonical file of its splits and, for images, a grid of samples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nas.data.ingest.base import Ingested
from nas.data.stored import write_splits

DATA_FILE = "data.npz"
SAMPLES_FILE = "samples.png"
SAMPLES_PER_CLASS = 8
SAMPLE_ROWS = 64  # classes shown; past that the grid is taller than any page shows
SAMPLE_SIDE = 64  # pixels of one sample in the grid; larger images are shrunk
_GAP = 2


def store(ingested: Ingested, folder: Path) -> dict[str, Any]:
    """Write ``folder/data.npz`` (and ``folder/samples.png`` for images: grey-scale, RGB or RGBA);
    return the dataset's facts computed from them."""
    import numpy as np

    splits = ingested.splits
    split = ingested.summary["split"]
    meta = {
        "class_names": ingested.class_names,
        "summary": ingested.summary,
        "split_seed": split.get("seed"),
        "test_fraction": split.get("test_fraction"),
        "test_given": ingested.test_given,
    }
    write_splits(folder / DATA_FILE, splits, meta)
    stored_bytes = (folder / DATA_FILE).stat().st_size
    if len(splits.input_shape) == 3 and splits.input_shape[0] in (1, 3, 4):
        _write_samples(ingested, folder / SAMPLES_FILE)
        stored_bytes += (folder / SAMPLES_FILE).stat().st_size
    counts = {
        "train": np.bincount(splits.y_train, minlength=splits.num_classes).tolist(),
        "test": np.bincount(splits.y_test, minlength=splits.num_classes).tolist(),
    }
    return {
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "class_names": ingested.class_names,
        "class_counts": counts,
        "n_train": len(splits.y_train),
        "n_test": len(splits.y_test),
        "stored_bytes": stored_bytes,
        "summary": ingested.summary,
    }


def _write_samples(ingested: Ingested, path: Path) -> None:
    """Up to :data:`SAMPLES_PER_CLASS` training images of each class, one row per class, in class
    order, un-standardised to their pixels."""
    import numpy as np
    from PIL import Image

    splits = ingested.splits
    channels, height, width = splits.input_shape
    scale = min(1.0, SAMPLE_SIDE / max(height, width))
    tile_h, tile_w = max(1, round(height * scale)), max(1, round(width * scale))
    rows = min(splits.num_classes, SAMPLE_ROWS)
    mode = "L" if channels == 1 else "RGB"
    grid = Image.new(
        mode,
        (SAMPLES_PER_CLASS * (tile_w + _GAP) + _GAP, rows * (tile_h + _GAP) + _GAP),
        255 if channels == 1 else (255, 255, 255),
    )
    mean = np.asarray(ingested.summary["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(ingested.summary["std"], dtype=np.float32)[:, None, None]
    for row in range(rows):
        for column, index in enumerate(np.flatnonzero(splits.y_train == row)[:SAMPLES_PER_CLASS]):
            values = splits.x_train[index] * std + mean
            low, high = (0.0, 1.0) if "scale" in ingested.summary else (float(values.min()), float(values.max()))
            pixels = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0) * 255
            array = pixels.round().astype(np.uint8).transpose(1, 2, 0)
            tile = Image.fromarray(array[..., 0] if channels == 1 else array[..., :3])
            if tile.size != (tile_w, tile_h):
                tile = tile.resize((tile_w, tile_h), Image.Resampling.BILINEAR)
            grid.paste(tile, (_GAP + column * (tile_w + _GAP), _GAP + row * (tile_h + _GAP)))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        grid.save(handle, format="PNG")
    os.replace(tmp, path)

"""Image archives (zip, tar, tar.gz) in torchvision's ImageFolder layout, decoded with Pillow.

The layout is ``<class>/<image>`` (deeper folders belong to their top folder's class), optionally
inside one wrapper folder; top-level ``train/`` and ``test/`` folders, both present, each in that
layout, give the test split. Files whose names don't end in an image extension are skipped
and counted, hidden ones (``.DS_Store``, ``__MACOSX/``) skipped; a file with an image extension
that Pillow can't decode as one of :data:`DECODERS` is refused. Every image is converted to
grey-scale or RGB, resized (squashed, not cropped) to ``image_size`` x ``image_size``, scaled to
[0, 1], then standardised per channel with the training split's mean and standard deviation.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from nas.data.ingest.archives import members
from nas.data.ingest.base import DatasetRejected, Ingested, IngestLimits, IngestOptions
from nas.data.ingest.prepare import class_indices, split, splits, standardise

EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# Pillow's decoders for those, and no others: some of Pillow's plug-ins hand the data to outside
# programs (EPS to Ghostscript), and fewer decoders are fewer parsers facing untrusted bytes.
DECODERS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# An image file's bytes, beyond its pixels at 8 bytes each (16-bit RGBA): room for headers and metadata.
_FILE_SLACK_BYTES = 1 << 20


def read_images(source: Path, options: IngestOptions, limits: IngestLimits) -> Ingested:
    mode, channels = ("L", 1) if options.color == "grayscale" else ("RGB", 3)
    size = options.image_size
    skipped: list[str] = []

    def wanted(parts: tuple[str, ...]) -> bool:
        if any(part.startswith(".") or part == "__MACOSX" for part in parts):
            return False
        if PurePosixPath(parts[-1]).suffix.lower() not in EXTENSIONS:
            skipped.append("/".join(parts))
            return False
        return True

    pixels: list[np.ndarray] = []
    paths: list[tuple[str, ...]] = []
    widths, heights = [], []
    with _pixel_limit(limits.image_pixels):
        for parts, data in members(source, limits, wanted, 8 * limits.image_pixels + _FILE_SLACK_BYTES):
            limits.check_expanded((len(pixels) + 1) * channels * size * size * 4, "the images once resized")
            image, (width, height) = _decode(data, "/".join(parts), mode, size)
            pixels.append(image)
            paths.append(parts)
            widths.append(width)
            heights.append(height)
    if not pixels:
        found = f"; it holds {len(skipped)} other files, e.g. {', '.join(map(repr, skipped[:3]))}" if skipped else ""
        raise DatasetRejected(
            f"the archive holds no images (files ending in {', '.join(sorted(EXTENSIONS))}) in class folders{found}"
        )
    names, is_test = _layout(paths)
    order = np.argsort(is_test, kind="stable")  # the given training images first, then the test images
    n_given_train = int((~is_test).sum()) if is_test.any() else None
    labels, class_names = class_indices(np.asarray(names, dtype=str)[order], "the class folders")
    x = np.stack([pixels[i] for i in order]).reshape(len(order), size, size, channels)
    del pixels
    x = x.transpose(0, 3, 1, 2).astype(np.float32)
    x /= np.float32(255.0)
    x_train, y_train, x_test, y_test, split_summary = split(x, labels, class_names, options, n_given_train)
    mean, std = standardise(x_train, x_test)
    summary: dict[str, Any] = {
        "per": "channel",
        "mean": mean,
        "std": std,
        "scale": 1 / 255,
        "color": options.color,
        "image_size": size,
        "source_sizes": {"width": [min(widths), max(widths)], "height": [min(heights), max(heights)]},
        "skipped_files": len(skipped),
        "split": split_summary,
    }
    given = n_given_train is not None
    return Ingested(splits(x_train, y_train, x_test, y_test, len(class_names)), class_names, given, summary)


@contextmanager
def _pixel_limit(pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb guard at ``pixels``, refusing (not warning) from there on."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _decode(data: bytes, name: str, mode: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The image in ``mode``, resized to ``size`` x ``size``, as uint8 ``(size, size, channels)``;
    and its size in the archive."""
    try:
        with Image.open(io.BytesIO(data), formats=DECODERS) as image:
            source_size = image.size
            image.draft(mode, (size, size))  # JPEG decodes at a reduced scale when that suffices
            resized = _eight_bit(image).convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetRejected(f"image {name!r} is too large (NAS_LIMIT_IMAGE_PIXELS): {exc}") from None
    except Exception as exc:  # Pillow's decoders raise many kinds (OSError, SyntaxError, struct.error) on bad data
        raise DatasetRejected(f"image {name!r} won't decode: {exc}") from None
    return np.asarray(resized, dtype=np.uint8), source_size


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grey-scale (scientific and medical PNG, TIFF) scaled to 8 bits; Pillow's own conversion
    would clip everything above 255 to white."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return image
    values = np.asarray(image, dtype=np.float32) / np.float32(257.0)
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def _layout(paths: list[tuple[str, ...]]) -> tuple[list[str], np.ndarray]:
    """Each image's class name, and whether it belongs to the given test split."""
    if len({parts[0] for parts in paths}) == 1 and all(len(parts) >= 3 for parts in paths):
        paths = [parts[1:] for parts in paths]  # one wrapper folder
    if {parts[0] for parts in paths} == {"train", "test"} and all(len(parts) >= 3 for parts in paths):
        return [parts[1] for parts in paths], np.array([parts[0] == "test" for parts in paths])
    loose = [parts for parts in paths if len(parts) < 2]
    if loose:
        raise DatasetRejected(
            f"image {'/'.join(loose[0])!r} lies in no class folder: the layout is <class>/<image> "
            f"(ImageFolder), optionally inside train/ and test/ folders"
        )
    return [parts[0] for parts in paths], np.zeros(len(paths), dtype=bool)

"""A reader of the IDX format (gzip-compressed) that MNIST and its relatives ship in.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the values in C order, big-endian. Anything else is rejected with the file named,
because a truncated download otherwise turns into silently wrong training data.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in the gzip-compressed IDX file at ``path``; ``ValueError`` if malformed."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares no dimensions")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, needs {header_end})")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = _DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - header_end
    if actual != expected:
        raise ValueError(f"{path}: IDX data is {actual} bytes, header shape {list(shape)} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)

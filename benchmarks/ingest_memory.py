"""Peak memory of reading one uploaded .npz, as a multiple of its size.

    python benchmarks/ingest_memory.py [--size-mib 512] [--dtype float32|uint8]

Writes an .npz of MNIST-shaped images (x) and labels (y) to a temporary folder, then reads it the
way the ingest worker does (``nas.data.ingest``: checks, float32 inputs, the stratified split,
standardisation) in a fresh process, and prints that process's peak resident memory growth. The
ingest needs the examples in memory to split and standardise them, so about 2x the upload (the
arrays as loaded, and the split's copies) is the floor of this design; BENCHMARKS.md, Upload.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

EXAMPLE_SHAPE = (1, 28, 28)


def _measure(source: Path) -> None:
    """In the child process: read the file as the ingest does and print the growth in bytes."""
    from nas.data.ingest.arrays import read_npz
    from nas.data.ingest.base import IngestLimits, IngestOptions
    from nas.settings import Settings

    limits = IngestLimits.from_settings(Settings())
    before = _high_water()
    read_npz(source, IngestOptions(format="npz"), limits)
    print(_high_water() - before)


def _high_water() -> int:
    """This process's peak resident memory in bytes (VmHWM: ru_maxrss would keep the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark needs Linux")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="size of the inputs in MiB (default 512)")
    parser.add_argument("--dtype", choices=("float32", "uint8"), default="float32", help="the inputs' type")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _measure(args.child)
        return
    dtype = np.dtype(args.dtype)
    n = args.size_mib * 2**20 // (int(np.prod(EXAMPLE_SHAPE)) * dtype.itemsize)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "upload.npz"
        x = (rng.random((n, *EXAMPLE_SHAPE), dtype=np.float32) * (255 if dtype == np.uint8 else 1)).astype(dtype)
        np.savez(source, x=x, y=rng.integers(0, 10, n))
        del x
        size = source.stat().st_size
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(source)], check=True, capture_output=True, text=True
        ).stdout
        growth = int(out.split()[-1])
    print(f"{n} examples of {args.dtype}, file {size / 1e6:,.0f} MB: the reading process grew "
          f"{growth / 1e6:,.0f} MB at its peak, {growth / size:.2f}x the file")


if __name__ == "__main__":
    main()

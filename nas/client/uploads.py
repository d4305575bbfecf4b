"""What the sync and async clients share to upload a dataset: the file (arrays written to a
temporary ``.npz``), the form fields, and a file object that reports how much has been sent."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any, Union

from nas.client._base import query

# A file path, ``(x, y)``, or ``{"x", "y", "x_test", "y_test"}`` (the test split optional).
DatasetSource = Union[str, "os.PathLike[str]", tuple[Any, Any], Mapping[str, Any]]
# True: a bar on stderr; a callable: given (bytes sent, bytes in all) as the file goes; False: nothing.
UploadProgress = Union[bool, Callable[[int, int], Any]]

ARRAY_NAMES = ("x", "y", "x_test", "y_test")
ARRAYS_FILE = "arrays.npz"  # the server names a dataset after its file unless ``name`` is given
NUMPY_MISSING = "uploading arrays needs numpy, which the light client does not install: pip install numpy"


def dataset_form(**options: Any) -> dict[str, str]:
    """The form fields of the options that were given; the server fills in the rest."""
    return {name: str(value) for name, value in query(**options).items()}


def form_parts(form: Mapping[str, str]) -> dict[str, tuple[None, str]]:
    """Form fields as parts without a file name: httpx sends them as ``multipart/form-data``, the
    only encoding the dataset route reads, even when no file goes with them."""
    return {name: (None, value) for name, value in form.items()}


@contextmanager
def dataset_file(source: DatasetSource) -> Iterator[Path]:
    """The file to upload: ``source`` itself when it is a path, else its arrays in a temporary
    ``.npz`` removed afterwards."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ValueError(f"{path} is a folder: upload images as a .zip or .tar.gz of one folder per class")
        yield path
        return
    arrays = _arrays(source)
    with tempfile.TemporaryDirectory(prefix="nas-upload-") as folder:
        path = Path(folder) / ARRAYS_FILE
        _save_npz(path, arrays)
        yield path


def _arrays(source: Any) -> dict[str, Any]:
    if isinstance(source, tuple) and len(source) == 2:
        named = dict(zip(("x", "y"), source))
    elif isinstance(source, Mapping):
        named = dict(source)
        unknown = sorted(set(named) - set(ARRAY_NAMES))
        if unknown or not {"x", "y"} <= set(named):
            raise ValueError(f"arrays need the keys x and y, optionally x_test and y_test; got {sorted(named)}")
    else:
        raise TypeError(
            "a dataset is a file path, a tuple (x, y) or a dict with x, y (and optionally x_test, y_test), "
            f"not {type(source).__name__}"
        )
    if ("x_test" in named) != ("y_test" in named):
        raise ValueError("a test split needs both x_test and y_test")
    return named


def _save_npz(path: Path, named: dict[str, Any]) -> None:
    try:
        import numpy as np
    except ModuleNotFoundError:
        raise ImportError(NUMPY_MISSING) from None
    arrays = {name: np.asarray(value) for name, value in named.items()}
    for name, array in arrays.items():
        if array.dtype.hasobject:  # would be pickled, which the server refuses to read
            raise ValueError(f"{name} holds Python objects; give numbers, or strings as class names")
    np.savez(path, **arrays)  # uncompressed: quick to write, and the size the server checks is the size sent


class ReportingFile:
    """A binary file that calls ``report(position)`` as it is read; httpx streams it in chunks,
    and rewinds it when a retry sends it again."""

    def __init__(self, file: IO[bytes], report: Callable[[int], Any]) -> None:
        self._file = file
        self._report = report

    def fileno(self) -> int:  # httpx sizes the body (Content-Length) from it
        return self._file.fileno()

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if chunk:
            self._report(self._file.tell())
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        self._report(position)
        return position

    def tell(self) -> int:
        return self._file.tell()


def upload_reporter(progress: UploadProgress, label: str, total: int) -> AbstractContextManager[Callable[[int], Any]]:
    """What a :class:`ReportingFile` calls while ``label`` (``total`` bytes) is sent."""
    if progress is True:
        from nas.client.progress import UploadBar

        return UploadBar(label, total)
    if callable(progress):
        return nullcontext(lambda sent: progress(sent, total))
    return nullcontext(lambda sent: None)

"""Datasets registered by path: only files under the folders an admin allows (``NAS_DATA_ROOTS``).

A path is judged by where it really leads: its real path (every symbolic link followed) must lie
under a root's real path, so a link inside a root that points out of it is refused, as is a path
with a ``..`` part, whatever it would resolve to. A path outside the roots is refused before
asking whether it exists, so the answer says nothing about files there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from nas.data.ingest.base import DatasetRejected


def resolve_under_roots(path_or_uri: str, roots: Sequence[Path]) -> Path:
    """The real path of the file that ``path_or_uri`` (an absolute path or a ``file:`` URI) names;
    :class:`DatasetRejected` (field ``path``) unless it is a file under one of ``roots``."""
    if not roots:
        raise DatasetRejected("registering by path is off: the server's admin sets NAS_DATA_ROOTS", "path")
    path = _local_path(path_or_uri)
    if ".." in PurePosixPath(path).parts:
        raise DatasetRejected(f"path {path_or_uri!r} has a '..' part; give the path without it", "path")
    if not os.path.isabs(path):
        raise DatasetRejected(f"path {path_or_uri!r} is relative; give an absolute path", "path")
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(os.path.realpath(root)) for root in roots):
        raise DatasetRejected(
            f"path {path_or_uri!r} is not under the folders the server reads datasets from (NAS_DATA_ROOTS)", "path"
        )
    if not os.path.exists(real):
        raise DatasetRejected(f"no file at {path_or_uri!r}", "path")
    if not os.path.isfile(real):
        raise DatasetRejected(f"{path_or_uri!r} is not a file", "path")
    return real


def _local_path(path_or_uri: str) -> str:
    if "\x00" in path_or_uri:
        raise DatasetRejected("the path has a NUL byte", "path")
    uri = urlsplit(path_or_uri)
    if not uri.scheme:
        return path_or_uri
    if uri.scheme != "file":
        raise DatasetRejected(f"only paths and file: URIs name datasets, not {uri.scheme}: URIs", "path")
    if uri.netloc not in ("", "localhost") or uri.query or uri.fragment:
        raise DatasetRejected(f"{path_or_uri!r} is not a local file URI (file:///absolute/path)", "path")
    return unquote(uri.path)

"""Reading a user's zip or tar archive in memory, one member at a time, every entry checked first.

Nothing is extracted to disk. An entry whose path is absolute or climbs out of the archive (``..``),
a link (symbolic or hard) and a device or pipe are refused, wherever they are, even among files
that would be skipped: an archive holding one is not a plain folder of files. Decompression bombs
are bounded by what the entries declare: zip and tar readers stop at a member's declared size
(zip also checks its CRC), so the sum of declared sizes, checked against
:attr:`~nas.data.ingest.base.IngestLimits.expanded_bytes` before anything is read (zip) or before
each member is (tar), bounds what decompressing can produce; a tar stream is moreover metered, so
that its headers can't grow past :data:`HEADER_BYTES` an entry either. Entries are counted against
:attr:`~nas.data.ingest.base.IngestLimits.max_files` before anything is held for each (zip) or as
they come (tar).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from nas.data.ingest.base import DatasetRejected, IngestLimits

# What one tar entry's headers may take: a long name or pax records up to 1 MiB, the header blocks,
# and the read-ahead of tarfile's stream.
HEADER_BYTES = (1 << 20) + 4 * tarfile.BLOCKSIZE + tarfile.RECORDSIZE
_COMPRESSIONS: tuple[tuple[bytes, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)

# zip's records (APPNOTE 4.3.12, 4.3.14-16): the central directory's file header, the end of
# central directory record, and zip64's end record and its locator.
_CENTRAL_HEADER = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_LOCATOR = struct.Struct("<4sLQL")

Wanted = Callable[[tuple[str, ...]], bool]


def members(
    source: Path, limits: IngestLimits, wanted: Wanted, member_bytes: int
) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """``(path parts, bytes)`` of each regular file that ``wanted`` accepts, in archive order; files
    over ``member_bytes`` are refused."""
    with source.open("rb") as handle:
        is_zip = handle.read(2) == b"PK"  # by its first bytes: a tar whose last file is a zip ends like a zip
    if is_zip:
        yield from _zip_members(source, limits, wanted, member_bytes)
    else:
        yield from _tar_members(source, limits, wanted, member_bytes)


def entry_parts(name: str) -> tuple[str, ...]:
    """An entry's path as its parts, refused if it could lead outside the archive's folder."""
    if "\x00" in name:
        raise DatasetRejected(f"archive entry {name!r} has a NUL byte in its name")
    path = name.replace("\\", "/")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise DatasetRejected(
            f"archive entry {name!r} has an absolute path; entries must lie inside the archive's folder"
        )
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    if ".." in parts:
        raise DatasetRejected(f"archive entry {name!r} climbs out of the archive's folder ('..')")
    return parts


def open_zip(source: Path, max_files: int) -> zipfile.ZipFile:
    """``source`` opened with :mod:`zipfile`, once its central directory is found to list at most
    ``max_files`` entries: :mod:`zipfile` builds an object for every one up front, and a directory
    of nothing but entries makes gigabytes of them from a large enough upload."""
    with source.open("rb") as handle:
        start, size = _central_directory(handle)
        handle.seek(start)
        entries = 0
        while size >= _CENTRAL_HEADER.size:  # as zipfile walks it
            header = _CENTRAL_HEADER.unpack(handle.read(_CENTRAL_HEADER.size))
            if header[0] != b"PK\x01\x02":
                break  # zipfile refuses it
            entries += 1
            if entries > max_files:
                raise DatasetRejected(f"the archive holds more than {max_files} entries")
            variable = header[12] + header[13] + header[14]  # name, extra field and comment lengths
            handle.seek(variable, os.SEEK_CUR)
            size -= _CENTRAL_HEADER.size + variable
    return zipfile.ZipFile(source)


def _central_directory(handle: BinaryIO) -> tuple[int, int]:
    """Where a zip's central directory starts and its size, found as :mod:`zipfile` finds them: from
    the end record (without or with a comment), and the zip64 end record just before it if there is
    one; ``(0, 0)`` when there is no end record (:mod:`zipfile` refuses the file then)."""
    end = handle.seek(0, os.SEEK_END)
    tail_start = max(0, end - _END.size - 0xFFFF)
    handle.seek(tail_start)
    tail = handle.read()
    at = len(tail) - _END.size if tail[-_END.size :][:4] == b"PK\x05\x06" else tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END.size:
        return 0, 0
    location, size = tail_start + at, _END.unpack_from(tail, at)[5]
    locator = tail[at - _END64_LOCATOR.size : at] if at >= _END64_LOCATOR.size else b""
    if locator[:4] == b"PK\x06\x07" and location >= _END64_LOCATOR.size + _END64.size:
        handle.seek(location - _END64_LOCATOR.size - _END64.size)
        record = _END64.unpack(handle.read(_END64.size))
        if record[0] == b"PK\x06\x06":
            location, size = location - _END64_LOCATOR.size - _END64.size, record[8]
    return max(0, location - size), size


def _zip_members(
    source: Path, limits: IngestLimits, wanted: Wanted, member_bytes: int
) -> Iterator[tuple[tuple[str, ...], bytes]]:
    try:
        archive = open_zip(source, limits.max_files)
    except (zipfile.BadZipFile, OSError, EOFError, struct.error) as exc:
        raise DatasetRejected(f"not a readable zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        for info in infos:
            entry_parts(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DatasetRejected(f"archive entry {info.filename!r} is a symbolic link; links are refused")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DatasetRejected(f"archive entry {info.filename!r} is not a file or folder (a device or pipe)")
            if info.flag_bits & 0x1:
                raise DatasetRejected(f"archive entry {info.filename!r} is encrypted")
        limits.check_expanded(sum(info.file_size for info in infos), "the archive")
        for info in infos:
            parts = entry_parts(info.filename)
            if info.is_dir() or not wanted(parts):
                continue
            _check_member_bytes(info.filename, info.file_size, member_bytes)
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
                raise DatasetRejected(f"archive entry {info.filename!r} is corrupt: {exc}") from None
            yield parts, data


class _Metered:
    """A tar stream, decompressed, that gives no more than its allowance: what the entries seen so far
    declare, plus :data:`HEADER_BYTES` for the next entry's headers.

    :mod:`tarfile` reads some headers whole into memory (long names, pax records, sparse maps), and a
    compressed archive can make them huge from a few bytes; this bounds them, and with them the work
    of decompressing, by what the archive truthfully holds.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._given = 0
        self._allowance = HEADER_BYTES

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size if size >= 0 else self._allowance - self._given + 1)
        self._given += len(data)
        if self._given > self._allowance:
            raise DatasetRejected(
                f"the archive's headers take more than {HEADER_BYTES} bytes for one entry "
                f"(long names, pax records or a sparse map)"
            )
        return data

    def allow(self, member: tarfile.TarInfo) -> None:
        """Let the stream give ``member``'s data (padded to whole blocks) and the next entry's headers."""
        self._allowance += -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE + HEADER_BYTES


def _tar_members(
    source: Path, limits: IngestLimits, wanted: Wanted, member_bytes: int
) -> Iterator[tuple[tuple[str, ...], bytes]]:
    count = expanded = 0
    try:
        with source.open("rb") as raw, _decompressed(raw) as stream:
            metered = _Metered(stream)
            # Stream mode: one pass, one member at a time, nothing seeks back.
            with tarfile.open(fileobj=metered, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    metered.allow(member)
                    count += 1
                    if count > limits.max_files:
                        raise DatasetRejected(f"the archive holds more than {limits.max_files} entries")
                    parts = entry_parts(member.name)
                    if member.issym() or member.islnk():
                        kind = "symbolic" if member.issym() else "hard"
                        raise DatasetRejected(
                            f"archive entry {member.name!r} is a {kind} link (to {member.linkname!r}); "
                            f"links are refused"
                        )
                    if member.isdir():
                        continue
                    if not member.isreg():
                        raise DatasetRejected(
                            f"archive entry {member.name!r} is not a file or folder (a device or pipe)"
                        )
                    expanded += member.size
                    limits.check_expanded(expanded, "the archive")
                    if not wanted(parts):
                        continue
                    _check_member_bytes(member.name, member.size, member_bytes)
                    handle = archive.extractfile(member)
                    assert handle is not None  # a regular file has contents
                    yield parts, handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DatasetRejected(f"not a readable zip or tar archive: {exc}") from None


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """``raw``'s bytes, decompressed if they start like gzip, bzip2 or xz."""
    start = raw.read(6)
    raw.seek(0)
    for magic, opener in _COMPRESSIONS:
        if start.startswith(magic):
            return opener(raw)
    return raw


def _check_member_bytes(name: str, size: int, member_bytes: int) -> None:
    if size > member_bytes:
        raise DatasetRejected(f"archive entry {name!r} is {size} bytes, over the limit of {member_bytes} for one file")

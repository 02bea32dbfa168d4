"""What a zip archive declares about its central directory, read from its last bytes only.

``zipfile.ZipFile`` reads the whole central directory into memory as soon as it opens an
archive, whatever its size; this looks at the end records first, so a caller can refuse an
archive of millions of entries without paying for them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

# End of central directory: signature, this disk, directory's disk, entries on this disk,
# entries in total, directory size, directory offset, comment length.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
# ZIP64 locator (right before the end record): signature, disk, record offset, disk count.
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
# ZIP64 end record (right before the locator): signature, record size, versions made by and
# needed, this disk, directory's disk, entries on this disk, entries in total, directory
# size, directory offset.
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
# The window zipfile searches for the end record: the record plus a comment of up to 64 KiB.
_SEARCH_WINDOW = _EOCD.size + (1 << 16)


@dataclass(frozen=True)
class ZipDirectory:
    entries: int
    """Entries the archive declares in total."""
    size: int
    """Bytes of its central directory: what ``zipfile`` reads and parses on opening."""


def read_zip_directory(fh: BinaryIO) -> ZipDirectory | None:
    """The entry count and central-directory size of the zip in ``fh``, from the end records
    ``zipfile`` itself would use (ZIP64 ones included); None when there is no end record.

    Reads at most the last 64 KiB and 98 bytes of the file.
    """
    file_size = fh.seek(0, os.SEEK_END)
    tail_size = min(file_size, _SEARCH_WINDOW + _ZIP64_LOCATOR.size + _ZIP64_EOCD.size)
    fh.seek(file_size - tail_size)
    tail = fh.read(tail_size)
    start = _find_end_record(tail)
    if start is None:
        return None
    entries, size = _EOCD.unpack_from(tail, start)[4:6]
    zip64 = _zip64_end_record(tail, start)
    if zip64 is not None:
        entries, size = zip64
    return ZipDirectory(entries=entries, size=size)


def _find_end_record(tail: bytes) -> int | None:
    """Where the end record starts in ``tail``, found as zipfile finds it: at the very end
    when there is no comment, else the last signature within the search window."""
    last = len(tail) - _EOCD.size
    if last >= 0 and tail.startswith(_EOCD_SIGNATURE, last) and tail.endswith(b"\x00\x00"):
        return last
    start = tail.rfind(_EOCD_SIGNATURE, max(len(tail) - _SEARCH_WINDOW, 0))
    if start < 0 or start + _EOCD.size > len(tail):
        return None
    return start


def _zip64_end_record(tail: bytes, end_record: int) -> tuple[int, int] | None:
    """(entries, directory size) from the ZIP64 end record, which zipfile prefers to the
    16- and 32-bit fields whenever its locator is present."""
    locator = end_record - _ZIP64_LOCATOR.size
    if locator < 0 or not tail.startswith(_ZIP64_LOCATOR_SIGNATURE, locator):
        return None
    record = locator - _ZIP64_EOCD.size
    if record < 0 or not tail.startswith(_ZIP64_EOCD_SIGNATURE, record):
        return None
    fields = _ZIP64_EOCD.unpack_from(tail, record)
    return fields[7], fields[8]

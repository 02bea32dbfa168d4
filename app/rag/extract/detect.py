"""The type of an upload, from its content: runs in the web process, on every upload."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from app.rag.extract.decode import BINARY_CHAR, bom_encoding, incremental_decode
from app.rag.extract.messages import DOCX_MAX_MEMBERS
from app.rag.extract.zipdir import ZipDirectory, read_zip_directory

_SNIFF_BYTES = 8192
_TEXT_TYPES_BY_SUFFIX = {
    ".md": "md",
    ".markdown": "md",
    ".csv": "csv",
    ".htm": "html",
    ".html": "html",
}
# Names that promise a binary format: text content behind them is a mislabelled or hostile file.
_BINARY_SUFFIXES = frozenset({".pdf", ".docx"})
_HTML_START = re.compile(r"<(?:!doctype\s+html|html|head|body)[\s>/]", re.IGNORECASE)
_LEADING_NOISE = re.compile(r"(?:\s|<!--.*?-->|<\?xml[^>]*\?>)*", re.DOTALL)
_MAX_BINARY_CHAR_RATIO = 0.05
# zipfile parses the whole central directory, whatever the entry count claims, when it opens an
# archive. An entry there is 46 bytes plus its name, extra field and comment, all short in a
# DOCX: a directory over 1 KiB more per declared entry (10.7 MB at the most) is refused.
_MAX_ZIP_DIRECTORY_BYTES_PER_ENTRY = 46 + 1024


def detect_file_type(path: Path, filename: str) -> str | None:
    """The content type of an upload, from its bytes; the name only picks a text flavour."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return None
    if not head:
        return None
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "docx" if _is_docx_zip(path) else None
    suffix = Path(filename).suffix.lower()
    if suffix in _BINARY_SUFFIXES:
        return None
    text = _sniff_text(head)
    if text is None:
        return None
    if _looks_like_html(text):
        return "html"
    return _TEXT_TYPES_BY_SUFFIX.get(suffix, "txt")


def _is_docx_zip(path: Path) -> bool:
    """A zip holding ``word/document.xml`` and at most as many parts as a DOCX may have.

    The end records are checked before ``zipfile`` parses the central directory, so an
    archive of millions of entries costs the web process a 64 KiB read, not gigabytes.
    """
    try:
        with path.open("rb") as fh:
            directory = read_zip_directory(fh)
            if directory is None or not _fits_a_docx(directory):
                return False
            with zipfile.ZipFile(fh) as zf:
                return "word/document.xml" in zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _fits_a_docx(directory: ZipDirectory) -> bool:
    """At most as many parts as a DOCX may hold, and a central directory no larger than they
    need (else the count understates what zipfile would parse)."""
    if directory.entries > DOCX_MAX_MEMBERS:
        return False
    return directory.size <= max(directory.entries, 1) * _MAX_ZIP_DIRECTORY_BYTES_PER_ENTRY


def _sniff_text(head: bytes) -> str | None:
    """Decoded start of a text file, or None when the bytes look binary."""
    encoding = bom_encoding(head)
    if encoding is not None:
        text = incremental_decode(head, encoding, errors="replace", final=False)
    elif b"\x00" in head:
        return None
    else:
        try:
            text = incremental_decode(head, "utf-8", errors="strict", final=False)
        except UnicodeDecodeError:
            text = head.decode("cp1252", errors="replace")
    # Control characters are valid UTF-8 too: text is what is mostly printable.
    binary_chars = len(BINARY_CHAR.findall(text))
    return text if binary_chars <= _MAX_BINARY_CHAR_RATIO * len(text) else None


def _looks_like_html(text: str) -> bool:
    text = text.lstrip("\ufeff")
    start = _LEADING_NOISE.match(text)
    rest = text[start.end() :] if start else text
    return _HTML_START.match(rest) is not None

"""Turn an uploaded file into plain text, page by page where the format has pages.

Uploads are hostile input: a PDF can loop a parser forever, a 30 KB DOCX can inflate to
gigabytes, a text file can be in any encoding. ``extract_text`` never lets a library exception
escape (everything becomes an ``ExtractionError`` whose message a customer can act on), and
``extract_bounded`` runs it in a child process with a memory cap and a deadline so that the
web server, which holds a large embedding model in memory, survives whatever the file does.
"""

import codecs
import copy
import csv
import io
import logging
import multiprocessing
import os
import queue
import re
import resource
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import charset_normalizer
import docx
import pypdf
from bs4 import BeautifulSoup, CData, NavigableString, PageElement, Tag
from pypdf import PasswordType
from pypdf.errors import DependencyError

logger = logging.getLogger(__name__)

SUPPORTED_TYPES: frozenset[str] = frozenset({"pdf", "docx", "html", "md", "txt", "csv"})

_LABELS = {
    "pdf": "PDF",
    "docx": "DOCX",
    "html": "HTML",
    "md": "Markdown",
    "txt": "text",
    "csv": "CSV",
}

# --- messages: each one tells the uploader what to do next ---
MSG_EMPTY = "The document contains no text."
MSG_UNSUPPORTED = (
    "This file type is not supported; upload a PDF, DOCX, HTML, Markdown, text or CSV file."
)
MSG_PDF_PASSWORD = "This PDF is password protected; remove the password and upload it again."
MSG_PDF_WRONG_PASSWORD = "The password given for this PDF is wrong; check it and try again."
MSG_PDF_NO_TEXT = (
    "This PDF has no extractable text (scanned pages need OCR). "
    "Run it through OCR or upload a version with selectable text."
)
MSG_PDF_DAMAGED = (
    "This PDF is damaged or not a valid PDF; export it again from the program that made it "
    "and upload the new file."
)
MSG_PDF_NO_PAGES = "This PDF has no pages; check that you uploaded the right file."
MSG_PDF_CRYPTO = (
    "This PDF uses an encryption method we cannot open; save it without encryption and "
    "upload it again."
)
MSG_DOCX_DAMAGED = (
    "This DOCX file is damaged or not a valid Word document; open it in Word, save it again "
    "and upload the new file."
)
MSG_DOCX_SIZES_LIE = (
    "This DOCX file looks like a zip bomb: its contents do not match the sizes it declares. "
    "Open it in Word, save it again and upload the new file."
)
MSG_DOCX_TOO_MANY_PARTS = (
    "This DOCX file looks like a zip bomb: it holds more than 10,000 parts. "
    "Open it in Word, save it again and upload the new file."
)
MSG_UNREADABLE_FILE = "We could not read the uploaded file; upload it again."


def _msg_docx_bomb(limit_mb: int) -> str:
    return (
        f"This DOCX file looks like a zip bomb: it decompresses to more than {limit_mb} MB. "
        "Remove large embedded images or split the document, then upload it again."
    )


def _msg_timeout(seconds: float) -> str:
    return (
        f"Parsing this file took longer than {seconds:g} second{'' if seconds == 1 else 's'}; "
        "it may be damaged or too "
        "complex. Try splitting it into smaller files or saving it in a simpler format."
    )


def _msg_memory(limit_mb: int | None) -> str:
    amount = f"more than {limit_mb} MB of memory" if limit_mb else "more memory than we allow"
    return f"Parsing this file needed {amount}; try splitting it into smaller files."


def _msg_generic(file_type: str) -> str:
    label = _LABELS.get(file_type, "uploaded")
    return (
        f"This {label} file could not be read; it may be damaged. "
        "Save it again from the program that made it and upload the new file."
    )


class ExtractionError(Exception):
    """A file we cannot turn into text; ``str(exc)`` is meant for the person who uploaded it."""


@dataclass(frozen=True)
class Section:
    """A span of extracted text; ``page`` is the 1-based PDF page, ``None`` for other types."""

    text: str
    page: int | None


# ---------------------------------------------------------------------------------------------
# File type detection
# ---------------------------------------------------------------------------------------------

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
# Control characters other than tab, newlines and form feed, and the replacement character.
_BINARY_CHAR = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")


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
    try:
        with zipfile.ZipFile(path) as zf:
            return "word/document.xml" in zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _sniff_text(head: bytes) -> str | None:
    """Decoded start of a text file, or None when the bytes look binary."""
    bom_encoding = _bom_encoding(head)
    if bom_encoding is not None:
        text = _incremental_decode(head, bom_encoding, errors="replace", final=False)
    elif b"\x00" in head:
        return None
    else:
        try:
            text = _incremental_decode(head, "utf-8", errors="strict", final=False)
        except UnicodeDecodeError:
            text = head.decode("cp1252", errors="replace")
    # Control characters are valid UTF-8 too: text is what is mostly printable.
    binary_chars = len(_BINARY_CHAR.findall(text))
    return text if binary_chars <= _MAX_BINARY_CHAR_RATIO * len(text) else None


def _looks_like_html(text: str) -> bool:
    text = text.lstrip("\ufeff")
    start = _LEADING_NOISE.match(text)
    rest = text[start.end() :] if start else text
    return _HTML_START.match(rest) is not None


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

# UTF-32 first: its little-endian BOM begins with the UTF-16 one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Mojibake made by decoding UTF-8 as Latin-1 contains C1 control characters, which never occur
# in real text, so runs containing them can be repaired without second-guessing real accents.
# One UTF-8 sequence (lead byte, exact number of continuation bytes) read as Latin-1, with at
# least one C1 character in it; exact lengths keep the regex free of backtracking.
_LATIN1_MOJIBAKE = re.compile(
    "[\xc2-\xdf][\x80-\x9f]"
    "|[\xe0-\xef](?:[\x80-\x9f][\x80-\xbf]|[\xa0-\xbf][\x80-\x9f])"
    "|[\xf0-\xf4](?=[\x80-\xbf]{0,2}[\x80-\x9f])[\x80-\xbf]{3}"
)
_WORD = re.compile(r"[^\W\d_]+")
_SYMBOL_IN_WORD = re.compile(r"[^\W\d_][^\w\s\x00-\x7f][^\W\d_]")
_WESTERN_MAX_FOREIGN_WORDS = 0.2
_C1_CONTROL = re.compile("[\x80-\x9f]")
_DETECTION_SAMPLE_BYTES = 64 * 1024


def decode_text(data: bytes) -> str:
    """Best-effort text from bytes in an unknown encoding; never raises."""
    return _decode(data, final=True)


def _decode(data: bytes, *, final: bool) -> str:
    """``final=False`` means ``data`` was cut short: a split last character is dropped."""
    bom_encoding = _bom_encoding(data)
    if bom_encoding is not None:
        return _incremental_decode(data, bom_encoding, errors="replace", final=final)
    try:
        text = _incremental_decode(data, "utf-8", errors="strict", final=final)
    except UnicodeDecodeError:
        return _decode_legacy(data)
    return _repair_latin1_mojibake(text)


def _bom_encoding(data: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding
    return None


def _incremental_decode(data: bytes, encoding: str, *, errors: str, final: bool) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    text = decoder.decode(data, final=final)
    return text.removeprefix("\ufeff")


def _decode_legacy(data: bytes) -> str:
    """Bytes that are not UTF-8: Western European first, then statistical detection.

    The encoding is judged on a sample; per-character checks over a whole 20 MB file would
    take seconds.
    """
    sample = _sample(data)
    if _plausible_western(_decode_cp1252(sample)):
        return _decode_cp1252(data)
    try:
        best = charset_normalizer.from_bytes(sample).best()
    except Exception:  # a detector bug must not lose the document: fall back below
        logger.warning("charset detection failed", exc_info=True)
        best = None
    if best is not None and best.encoding:
        try:
            return data.decode(best.encoding, errors="replace")
        except LookupError:
            pass
    return _decode_cp1252(data)


def _sample(data: bytes) -> bytes:
    if len(data) <= _DETECTION_SAMPLE_BYTES:
        return data
    sample = data[:_DETECTION_SAMPLE_BYTES]
    # Cut after a newline: it is never part of a multi-byte character in legacy CJK encodings,
    # so the detector does not see a broken last character.
    cut = sample.rfind(b"\n")
    return sample[: cut + 1] if cut > len(sample) // 2 else sample


def _decode_cp1252(data: bytes) -> str:
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        # cp1252 leaves five bytes undefined; Latin-1 maps every byte, so it cannot fail.
        return data.decode("latin-1")


def _plausible_western(text: str) -> bool:
    """Whether cp1252 is the likely encoding of a non-UTF-8 file.

    Statistical detectors misread short Latin-1 text as Baltic or Central European, so cp1252
    is tried first, and accepted only when it looks like a Western language: accented letters
    sit inside otherwise ASCII words ("café", "Müller"). Cyrillic or Greek bytes read as cp1252
    give words made only of accented letters ("Ïðèâåò"), and Central European letters that
    cp1252 lacks turn into symbols inside words (Polish "mąka" reads "m¹ka").
    """
    if _BINARY_CHAR.search(text) or _SYMBOL_IN_WORD.search(text):
        return False
    accented_words = foreign_words = 0
    for word in _WORD.findall(text):
        if word.isascii():
            continue
        accented_words += 1
        if len(word) > 1 and not any(char.isascii() for char in word):
            foreign_words += 1
    return foreign_words <= _WESTERN_MAX_FOREIGN_WORDS * accented_words


def _repair_latin1_mojibake(text: str) -> str:
    if not _C1_CONTROL.search(text):
        return text
    try:  # the usual case: the whole file went through one wrong round trip
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass

    def repair(match: re.Match[str]) -> str:
        run = match.group()
        try:
            return run.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return run

    return _LATIN1_MOJIBAKE.sub(repair, text)


def _read_prefix(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the file and whether the file was longer."""
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    return data[:max_bytes], len(data) > max_bytes


def _read_text(path: Path, max_chars: int) -> str:
    # 4 bytes per character covers UTF-8 and UTF-32, so a capped read never loses characters
    # that could still fit under max_chars.
    data, truncated = _read_prefix(path, max_chars * 4 + 4)
    return _decode(data, final=not truncated)[:max_chars]


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------


class _Budget:
    """Collects text pieces until ``max_chars`` characters have been taken."""

    def __init__(self, max_chars: int) -> None:
        self.remaining = max_chars

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0

    def take(self, text: str) -> str:
        text = text[: max(self.remaining, 0)]
        self.remaining -= len(text)
        return text


def extract_text(
    path: Path,
    file_type: str,
    *,
    max_pages: int,
    max_chars: int,
    password: str | None = None,
) -> list[Section]:
    """Text of the file as sections (one per PDF page with text, one for other types).

    ``password`` is only used for encrypted PDFs; without it the empty password is tried.
    Raises only ``ExtractionError``.
    """
    try:
        return _extract_sections(
            path, file_type, max_pages=max_pages, max_chars=max_chars, password=password
        )
    except MemoryError:
        raise ExtractionError(_msg_memory(None)) from None


def _extract_sections(
    path: Path, file_type: str, *, max_pages: int, max_chars: int, password: str | None
) -> list[Section]:
    """``extract_text`` minus the MemoryError translation, so a caller that knows the memory
    limit can name it."""
    if file_type not in SUPPORTED_TYPES:
        raise ExtractionError(MSG_UNSUPPORTED)
    if not path.is_file():
        # A server-side problem (upload deleted or never stored), not a damaged document.
        logger.warning("upload to extract is missing: %s", path)
        raise ExtractionError(MSG_UNREADABLE_FILE)
    try:
        if file_type == "pdf":
            sections = _extract_pdf(path, max_pages, max_chars, password)
        else:
            sections = [Section(_TEXT_EXTRACTORS[file_type](path, max_chars), None)]
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:
        # Parsers raise anything from KeyError to RecursionError on hostile input; the upload is
        # what is broken, so the customer gets a sentence and the log keeps the details.
        logger.warning("%s extraction failed: %r", file_type, exc, exc_info=True)
        raise ExtractionError(_msg_generic(file_type)) from None
    sections = _clean_sections(sections, max_chars)
    if not sections:
        raise ExtractionError(MSG_EMPTY)
    return sections


def _clean_sections(sections: list[Section], max_chars: int) -> list[Section]:
    budget = _Budget(max_chars)
    cleaned = []
    for section in sections:
        text = section.text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
        text = budget.take(text.strip())
        if text.strip():
            cleaned.append(Section(text, section.page))
    return cleaned


# --- PDF ---


def _extract_pdf(path: Path, max_pages: int, max_chars: int, password: str | None) -> list[Section]:
    try:
        reader = pypdf.PdfReader(path, strict=False)
        _unlock_pdf(reader, password)
        page_count = len(reader.pages)
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:
        logger.info("unreadable PDF: %r", exc)
        raise ExtractionError(MSG_PDF_DAMAGED) from None
    if page_count == 0:
        raise ExtractionError(MSG_PDF_NO_PAGES)

    budget = _Budget(max_chars)
    sections: list[Section] = []
    failed_pages = 0
    for index in range(min(page_count, max_pages)):
        if budget.exhausted:
            break
        try:
            text = reader.pages[index].extract_text() or ""
        except MemoryError:
            raise
        except Exception as exc:
            # One broken page should not cost the customer the rest of the document.
            logger.info("PDF page %d unreadable: %r", index + 1, exc)
            failed_pages += 1
            continue
        # Pages whose text layer is garbage (bad OCR) are kept: without OCR of our own, some
        # words are better than none.
        if text.strip():
            sections.append(Section(budget.take(text), index + 1))
    if sections:
        return sections
    if failed_pages:
        raise ExtractionError(MSG_PDF_DAMAGED)
    raise ExtractionError(MSG_PDF_NO_TEXT)


def _unlock_pdf(reader: pypdf.PdfReader, password: str | None) -> None:
    if not reader.is_encrypted:
        return
    try:
        # Many "encrypted" PDFs only restrict printing and open with the empty user password.
        if reader.decrypt("") != PasswordType.NOT_DECRYPTED:
            return
        if password and reader.decrypt(password) != PasswordType.NOT_DECRYPTED:
            return
    except DependencyError:
        raise ExtractionError(MSG_PDF_CRYPTO) from None
    raise ExtractionError(MSG_PDF_WRONG_PASSWORD if password else MSG_PDF_PASSWORD)


# --- DOCX ---

_DOCX_MAX_TOTAL_MB = 200
_DOCX_MAX_MEMBERS = 10_000
_DOCX_SUSPICIOUS_RATIO = 100
_DOCX_SUSPICIOUS_MEMBER_BYTES = 10 * 1024 * 1024
_READ_CHUNK = 1024 * 1024

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
_W_P, _W_T, _W_TBL, _W_TR, _W_TC = f"{_W}p", f"{_W}t", f"{_W}tbl", f"{_W}tr", f"{_W}tc"
_W_SDT, _W_SDT_CONTENT, _W_CUSTOM_XML = f"{_W}sdt", f"{_W}sdtContent", f"{_W}customXml"
_W_TC_PR, _W_VMERGE, _W_VAL = f"{_W}tcPr", f"{_W}vMerge", f"{_W}val"
_DOCX_INLINE_TEXT = {f"{_W}tab": "\t", f"{_W}br": "\n", f"{_W}cr": "\n", f"{_W}noBreakHyphen": "-"}
# AlternateContent repeats its Choice (e.g. a modern text box) in a Fallback for old readers.
_MC_FALLBACK = f"{_MC}Fallback"


def _extract_docx(path: Path, max_chars: int) -> str:
    _check_zip_bomb(path)
    try:
        document = docx.Document(str(path))
    except Exception as exc:
        logger.info("unreadable DOCX: %r", exc)
        raise ExtractionError(MSG_DOCX_DAMAGED) from None
    budget = _Budget(max_chars)
    parts = []
    for block in _block_texts(document.element.body):
        if block.strip():
            parts.append(budget.take(block))
        if budget.exhausted:
            break
    return "\n".join(parts)


def _check_zip_bomb(path: Path) -> None:
    """Reject archives that inflate beyond the limit before python-docx reads every part.

    Declared sizes are checked first (cheap), then each member is actually inflated with a cap,
    because the central directory can understate what the compressed stream produces.
    """
    limit = _DOCX_MAX_TOTAL_MB * 1024 * 1024
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            _check_declared_sizes(members, limit)
            inflated = 0
            for member in members:
                inflated += _inflated_size(zf, member, limit - inflated)
    except ExtractionError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        logger.info("broken DOCX zip: %r", exc)
        raise ExtractionError(MSG_DOCX_DAMAGED) from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted or exotic compression
        logger.info("unsupported DOCX zip: %r", exc)
        raise ExtractionError(MSG_DOCX_DAMAGED) from None


def _check_declared_sizes(members: list[zipfile.ZipInfo], limit: int) -> None:
    if len(members) > _DOCX_MAX_MEMBERS:
        raise ExtractionError(MSG_DOCX_TOO_MANY_PARTS)
    if sum(member.file_size for member in members) > limit:
        raise ExtractionError(_msg_docx_bomb(_DOCX_MAX_TOTAL_MB))
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > _DOCX_SUSPICIOUS_MEMBER_BYTES and ratio > _DOCX_SUSPICIOUS_RATIO:
            raise ExtractionError(_msg_docx_bomb(_DOCX_MAX_TOTAL_MB))


def _inflated_size(zf: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> int:
    """Bytes the member really inflates to; raises once that passes ``limit``."""
    # zipfile stops at the declared size and then fails the CRC check, which would hide how
    # big the member really is: a copy that declares limit+1 bytes and carries no CRC makes it
    # inflate up to the cap. python-docx later reads the real entry, CRC check included.
    probe = copy.copy(member)
    probe.file_size = limit + 1
    del probe.CRC
    size = 0
    with zf.open(probe) as fh:
        while chunk := fh.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ExtractionError(_msg_docx_bomb(_DOCX_MAX_TOTAL_MB))
    if size != member.file_size:
        raise ExtractionError(MSG_DOCX_SIZES_LIE)
    return size


def _block_texts(container: Any) -> Iterator[str]:
    """Paragraph and table-row texts under a body, cell or content control, in order."""
    for child in container:
        if child.tag == _W_P:
            yield _paragraph_text(child)
        elif child.tag == _W_TBL:
            yield from _table_rows(child)
        elif child.tag == _W_SDT:
            for content in child.iterchildren(_W_SDT_CONTENT):
                yield from _block_texts(content)
        elif child.tag == _W_CUSTOM_XML:
            yield from _block_texts(child)


def _paragraph_text(paragraph: Any) -> str:
    parts: list[str] = []
    _collect_inline_text(paragraph, parts)
    return "".join(parts)


def _collect_inline_text(element: Any, parts: list[str]) -> None:
    for child in element:
        tag = child.tag
        if not isinstance(tag, str) or tag == _MC_FALLBACK:
            continue
        if tag == _W_T:
            parts.append(child.text or "")
        elif tag in _DOCX_INLINE_TEXT:
            parts.append(_DOCX_INLINE_TEXT[tag])
        elif tag == _W_P:  # a paragraph inside a text box
            parts.append("\n")
            _collect_inline_text(child, parts)
            parts.append("\n")
        else:
            _collect_inline_text(child, parts)


def _table_rows(table: Any) -> Iterator[str]:
    for row in _children(table, _W_TR):
        cells = []
        for cell in _children(row, _W_TC):
            if _is_merge_continuation(cell):
                continue
            text = "\n".join(block for block in _block_texts(cell) if block.strip())
            if text:
                cells.append(text)
        if cells:
            yield " | ".join(cells)


def _children(element: Any, tag: str) -> Iterator[Any]:
    """Direct children with ``tag``, looking through content controls and custom XML."""
    for child in element:
        if child.tag == tag:
            yield child
        elif child.tag == _W_SDT:
            for content in child.iterchildren(_W_SDT_CONTENT):
                yield from _children(content, tag)
        elif child.tag == _W_CUSTOM_XML:
            yield from _children(child, tag)


def _is_merge_continuation(cell: Any) -> bool:
    """A cell covered by the vertically merged cell above it (its text belongs to that one)."""
    properties = cell.find(_W_TC_PR)
    if properties is None:
        return False
    vmerge = properties.find(_W_VMERGE)
    return vmerge is not None and vmerge.get(_W_VAL) != "restart"


# --- HTML ---

_HTML_DROP_TAGS = {
    "head", "script", "style", "noscript", "template", "nav", "aside", "form", "svg",
    "iframe", "object", "embed", "canvas", "button", "select", "dialog",
}  # fmt: skip
_HTML_DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search"}
_HTML_BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
    "li", "dl", "dt", "dd", "table", "caption", "thead", "tbody", "tfoot", "tr", "td", "th",
    "blockquote", "pre", "figure", "figcaption", "address", "hr", "details", "summary",
    "header", "footer",
}  # fmt: skip
_HTML_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([a-zA-Z0-9_.:-]+)", re.IGNORECASE)
# As browsers do (WHATWG encoding spec): these labels mean their superset in practice.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
}
_HTML_MARKUP_FACTOR = 20
_HTML_MIN_BYTES = 10 * 1024 * 1024
_SPACES = re.compile(r"[^\S\n]+")


def _extract_html(path: Path, max_chars: int) -> str:
    # Markup outweighs text, so read more than max_chars, but still a bounded amount.
    data, truncated = _read_prefix(path, max(max_chars * _HTML_MARKUP_FACTOR, _HTML_MIN_BYTES))
    soup = BeautifulSoup(_decode_html(data, final=not truncated), "lxml")
    return _tidy_lines(_page_text(soup))[:max_chars]


def _decode_html(data: bytes, *, final: bool) -> str:
    """Bytes as text: a BOM wins, then a <meta> charset, then detection.

    Only <meta> declarations count: a <script charset="gbk"> describes the script file it
    points to, not this page.
    """
    if _bom_encoding(data) is None:
        match = _META_CHARSET.search(data[:4096])
        if match:
            label = match.group(1).decode("ascii", errors="replace").lower()
            encoding = _CHARSET_ALIASES.get(label, label)
            try:
                return _incremental_decode(data, encoding, errors="strict", final=final)
            except (LookupError, UnicodeDecodeError):
                logger.info("HTML declares charset %r but does not match it", label)
    return _decode(data, final=final)


def _visible_text(root: Tag) -> str:
    """Text a reader sees, with a line break around every block element.

    An explicit stack instead of recursion or tree edits: hostile pages nest elements 100,000
    deep, which overflows recursion and makes BeautifulSoup's insert/decompose quadratic.
    """
    parts: list[str] = []
    # (node, inside an <article>/<main>, is the closing marker of a block)
    stack: list[tuple[PageElement, bool, bool]] = [(root, False, False)]
    while stack:
        node, in_article, closing = stack.pop()
        if closing:
            parts.append("\n")
        elif isinstance(node, Tag):
            if node.name == "br":
                parts.append("\n")
            elif not _is_invisible(node, in_article):
                in_article = in_article or _is_article(node)
                if node.name in _HTML_BLOCK_TAGS:
                    parts.append("\n")
                    stack.append((node, in_article, True))
                stack.extend((child, in_article, False) for child in reversed(node.contents))
        elif type(node) in (NavigableString, CData):  # not comments, doctypes, script text
            parts.append(str(node))
    return "".join(parts)


def _is_article(tag: Tag) -> bool:
    return tag.name in ("article", "main") or tag.get("role") == "main"


def _is_invisible(tag: Tag, in_article: bool) -> bool:
    if tag.name in _HTML_DROP_TAGS:
        return True
    if tag.name in ("header", "footer"):
        # A header or footer inside an article introduces that article (headline, byline);
        # only the page-level ones are site chrome.
        return not in_article
    if tag.get("role") in _HTML_DROP_ROLES or tag.get("aria-hidden") == "true":
        return True
    if tag.has_attr("hidden"):
        return True
    style = tag.get("style")
    return isinstance(style, str) and _HTML_HIDDEN_STYLE.search(style) is not None


def _page_text(soup: BeautifulSoup) -> str:
    """Visible text of the page's <main> (or role=main) when it has any: by definition it
    holds the page's own content, and everything around it is site chrome."""
    main = soup.find("main") or soup.find(role="main")
    if isinstance(main, Tag):
        text = _visible_text(main)
        if text.strip():
            return text
    return _visible_text(soup)


def _tidy_lines(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


# --- Markdown ---

_MD_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Every pattern stops at a bracket, parenthesis, angle bracket or newline, so a hostile file
# full of unclosed "[" or "(" costs linear time instead of re-scanning to the end each time.
_LINK_TARGET = r"(?:\([^()\n]*\)|\[[^\[\]\n]*\])"
_MD_NOISE = [
    (re.compile(r"<img\b[^<>]*>", re.IGNORECASE), ""),
    (re.compile(r"!\[[^\[\]\n]*\]" + _LINK_TARGET), ""),  # images, badges included
    (re.compile(r"\[[ \t]*\]" + _LINK_TARGET), ""),  # links left empty by the above
    (re.compile(r"\[([^\[\]\n]+)\]" + _LINK_TARGET), r"\1"),  # link -> its text
    (re.compile(r"^ {0,3}\[[^\[\]\n]+\]:[ \t]*\S.*$", re.MULTILINE), ""),  # link definitions
    (re.compile(r"^ {0,3}#{1,6}[ \t]+", re.MULTILINE), ""),  # heading marks
]
_BLANK_RUNS = re.compile(r"\n{3,}")


def _extract_md(path: Path, max_chars: int) -> str:
    text = _read_text(path, max_chars)
    pieces = [block if is_code else _strip_md_noise(block) for is_code, block in _md_blocks(text)]
    return _BLANK_RUNS.sub("\n\n", "".join(pieces))


def _md_blocks(text: str) -> Iterator[tuple[bool, str]]:
    """The text split into (is_fenced_code, text) runs, fences kept verbatim, so that HTML in
    code samples is never treated as markup."""
    fence: str | None = None
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        match = _MD_FENCE.match(line)
        if fence is None and match:
            yield False, "".join(current)
            current, fence = [line], match.group(1)
        elif fence is not None and match and _closes(match.group(1), fence):
            current.append(line)
            yield True, "".join(current)
            current, fence = [], None
        else:
            current.append(line)
    yield fence is not None, "".join(current)


def _closes(marker: str, fence: str) -> bool:
    return marker[0] == fence[0] and len(marker) >= len(fence)


def _strip_md_noise(text: str) -> str:
    text = _drop_html_comments(text)
    for pattern, replacement in _MD_NOISE:
        text = pattern.sub(replacement, text)
    # rstrip per line: the regex [ \t]+$ backtracks quadratically on long runs of spaces.
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _drop_html_comments(text: str) -> str:
    """Text without <!-- ... --> comments; an unclosed one is kept as text."""
    parts = []
    position = 0
    while (start := text.find("<!--", position)) != -1:
        end = text.find("-->", start + 4)
        if end == -1:
            break
        parts.append(text[position:start])
        position = end + 3
    parts.append(text[position:])
    return "".join(parts)


# --- plain text and CSV ---


def _extract_txt(path: Path, max_chars: int) -> str:
    return _read_text(path, max_chars)


_CSV_DELIMITERS = ",;\t|"
_CSV_SNIFF_CHARS = 64 * 1024
# Below this share of rows agreeing on a field count, the file is prose with commas.
_CSV_MIN_CONSISTENCY = 0.6


def _extract_csv(path: Path, max_chars: int) -> str:
    text = _read_text(path, max_chars)
    delimiter = _sniff_delimiter(text)
    if delimiter is None:
        return text
    try:
        rendered = _render_csv(text, delimiter, max_chars)
    except csv.Error as exc:
        logger.info("CSV not parseable, keeping it as plain text: %r", exc)
        return text
    return rendered or text


def _sniff_delimiter(text: str) -> str | None:
    """The delimiter that splits most rows into the same number (at least two) of fields.

    csv.Sniffer is not used: its regexes take quadratic time (seconds on 64 KB of quotes)
    and it gives up when blank lines make fewer than 90% of lines agree.
    """
    sample = text[:_CSV_SNIFF_CHARS]
    if len(text) > _CSV_SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # a cut last line would look ragged
    best: str | None = None
    best_score = (_CSV_MIN_CONSISTENCY, 0)
    for delimiter in _CSV_DELIMITERS:
        try:
            rows = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
            widths = [len(row) for row in rows if any(cell.strip() for cell in row)]
        except csv.Error:
            continue
        if not widths:
            continue
        width, count = Counter(widths).most_common(1)[0]
        score = (count / len(widths), width)
        if width >= 2 and score >= best_score:
            best, best_score = delimiter, score
    return best


def _render_csv(text: str, delimiter: str, max_chars: int) -> str:
    """One line per row, ``header: value; ...``, so each line stands on its own in a chunk."""
    budget = _Budget(max_chars)
    header: list[str] | None = None
    lines = []
    for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if header is None:
            header = cells
            continue
        lines.append(budget.take(_render_row(header, cells)))
        if budget.exhausted:
            break
    if header is not None and not lines:
        return "; ".join(name for name in header if name)
    return "\n".join(lines)


def _render_row(header: list[str], cells: list[str]) -> str:
    pairs = []
    for position, value in enumerate(cells):
        if not value:
            continue
        name = header[position] if position < len(header) else ""
        pairs.append(f"{name or f'column {position + 1}'}: {value}")
    return "; ".join(pairs)


_TEXT_EXTRACTORS: dict[str, Callable[[Path, int], str]] = {
    "docx": _extract_docx,
    "html": _extract_html,
    "md": _extract_md,
    "txt": _extract_txt,
    "csv": _extract_csv,
}


# ---------------------------------------------------------------------------------------------
# Bounded extraction in child processes
# ---------------------------------------------------------------------------------------------

# Two worker processes, each used by one call at a time: two uploads can be parsed in parallel,
# and a call that times out kills only its own process, never another thread's parse. A third
# caller waits for a free worker; that wait is bounded by the others' timeouts.
_PARALLEL_EXTRACTIONS = 2
# A worker that parsed many files keeps a fragmented heap; a fresh one costs ~0.3 s.
_TASKS_PER_WORKER = 25
_WORKER_START_TIMEOUT_S = 60.0
_MSG_WORKER_START = "The document parser failed to start; the document will be retried."


class ExtractorUnavailable(RuntimeError):
    """The parser process could not start: our problem, not the file's (retry later)."""


def _msg_crashed(limit_mb: int) -> str:
    return (
        f"Parsing this file crashed the parser or needed more than {limit_mb} MB of memory; "
        "try splitting it into smaller files or saving it in a simpler format."
    )


class _MemoryExhausted(ExtractionError):
    """Raised in a worker that hit its memory cap, so the parent can replace that worker."""


def _init_worker() -> None:
    # pypdf logs a warning for every quirk of a damaged file; the parent logs the outcome.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    _set_rlimit(resource.RLIMIT_CORE, 0)
    _die_with_parent()


def _die_with_parent() -> None:
    """End this child soon after its parent dies, even by SIGKILL (no orphaned parsers).
    A watchdog, not prctl(PR_SET_PDEATHSIG): that fires when the parent *thread* that
    started us exits, which a healthy server's worker threads do."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_ready() -> bool:
    return True


def _set_rlimit(kind: int, soft: int) -> None:
    """Set a soft limit (never above the hard one); the hard limit stays, so later calls can
    raise the soft limit again."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
        soft = hard
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError):  # e.g. macOS refuses RLIMIT_AS: run without the cap
        logger.warning("could not set resource limit %s", kind, exc_info=True)


def _extract_in_worker(
    path: str,
    file_type: str,
    max_memory_mb: int,
    max_pages: int,
    max_chars: int,
    password: str | None,
) -> list[Section]:
    # RLIMIT_AS counts address space, not resident memory; the idle worker uses ~65 MB of it.
    _set_rlimit(resource.RLIMIT_AS, max_memory_mb * 1024 * 1024)
    try:
        return _extract_sections(
            Path(path), file_type, max_pages=max_pages, max_chars=max_chars, password=password
        )
    except MemoryError:
        raise _MemoryExhausted(_msg_memory(max_memory_mb)) from None
    finally:
        _set_rlimit(resource.RLIMIT_AS, resource.RLIM_INFINITY)


class _Worker:
    """One lazily started child process; only the thread that took it from the pool uses it."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._tasks = 0

    def run(self, timeout_s: float, max_memory_mb: int, args: tuple[Any, ...]) -> list[Section]:
        future = self.ensure_started().submit(_extract_in_worker, *args)
        self._tasks += 1
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeoutError:
            self.stop()
            raise ExtractionError(_msg_timeout(timeout_s)) from None
        except BrokenProcessPool:
            # The child died instead of raising: the C allocator aborted at the address-space
            # cap, or a C parser crashed on the file.
            self.stop()
            raise ExtractionError(_msg_crashed(max_memory_mb)) from None
        except _MemoryExhausted:
            self.stop()
            raise
        except MemoryError:  # unpickling a result the parent itself has no room for
            raise ExtractionError(_msg_memory(max_memory_mb)) from None

    def ensure_started(self) -> ProcessPoolExecutor:
        if self._executor is not None and (
            getattr(self._executor, "_broken", False) or self._tasks >= _TASKS_PER_WORKER
        ):
            self.stop()
        if self._executor is None:
            self._executor = self._start()
            self._tasks = 0
        return self._executor

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: forking a server that holds a large model and running threads can
        # deadlock the child and copies far more memory than a fresh interpreter needs.
        executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )
        try:
            # Start the child before the parse deadline begins, so interpreter start-up and
            # imports do not count against timeout_s.
            executor.submit(_worker_ready).result(timeout=_WORKER_START_TIMEOUT_S)
        except Exception:
            logger.exception("extraction worker failed to start")
            _kill_executor(executor)
            raise ExtractorUnavailable(_MSG_WORKER_START) from None
        return executor

    def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            _kill_executor(executor)


def _kill_executor(executor: ProcessPoolExecutor) -> None:
    """Kill the executor's processes even if they are busy.

    ProcessPoolExecutor cannot cancel a running task (Python 3.14 adds kill_workers()), so the
    processes are killed through its private ``_processes`` map.
    """
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


_workers = [_Worker() for _ in range(_PARALLEL_EXTRACTIONS)]
_idle_workers: queue.Queue[_Worker] = queue.Queue()
for _worker in _workers:
    _idle_workers.put(_worker)
_shutdown_lock = threading.Lock()


def extract_bounded(
    path: Path,
    file_type: str,
    *,
    timeout_s: float,
    max_memory_mb: int,
    max_pages: int,
    max_chars: int,
    password: str | None = None,
) -> list[Section]:
    """``extract_text`` in a child process capped at ``max_memory_mb`` of address space and
    ``timeout_s`` of wall time. Thread-safe; raises only ``ExtractionError``."""
    if file_type not in SUPPORTED_TYPES:
        raise ExtractionError(MSG_UNSUPPORTED)
    worker = _idle_workers.get()
    try:
        args = (str(path), file_type, max_memory_mb, max_pages, max_chars, password)
        return worker.run(timeout_s, max_memory_mb, args)
    except ExtractionError:
        raise
    except Exception as exc:
        logger.exception("bounded extraction failed")
        worker.stop()
        raise ExtractionError(_msg_generic(file_type)) from exc
    finally:
        _idle_workers.put(worker)


def warm_up_extractors() -> None:
    """Start the worker processes now (e.g. at app start-up) instead of on the first upload."""
    workers = [_idle_workers.get() for _ in range(_PARALLEL_EXTRACTIONS)]
    try:
        for worker in workers:
            worker.ensure_started()
    finally:
        for worker in workers:
            _idle_workers.put(worker)


def shutdown_extractors() -> None:
    """Kill the worker processes; a later call to ``extract_bounded`` starts new ones."""
    with _shutdown_lock:
        for worker in _workers:
            worker.stop()

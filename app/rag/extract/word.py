"""DOCX: paragraphs and table rows in document order, after a zip-bomb check; one section per
heading (Title, Heading 1-9 or an outline level) with its heading path."""

from __future__ import annotations

import copy
import logging
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docx

from app.rag.extract.messages import (
    DOCX_MAX_MEMBERS,
    DOCX_MAX_TOTAL_MB,
    MSG_DOCX_DAMAGED,
    MSG_DOCX_SIZES_LIE,
    MSG_DOCX_TOO_MANY_PARTS,
    ExtractionError,
    msg_docx_bomb,
)
from app.rag.extract.sections import Section, SectionBuilder

logger = logging.getLogger(__name__)

_DOCX_SUSPICIOUS_RATIO = 100
_DOCX_SUSPICIOUS_MEMBER_BYTES = 10 * 1024 * 1024
_READ_CHUNK = 1024 * 1024

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
_W_P, _W_T, _W_TBL, _W_TR, _W_TC = f"{_W}p", f"{_W}t", f"{_W}tbl", f"{_W}tr", f"{_W}tc"
_W_SDT, _W_SDT_CONTENT, _W_CUSTOM_XML = f"{_W}sdt", f"{_W}sdtContent", f"{_W}customXml"
_W_TC_PR, _W_VMERGE, _W_VAL = f"{_W}tcPr", f"{_W}vMerge", f"{_W}val"
_W_PPR, _W_PSTYLE, _W_OUTLINE = f"{_W}pPr", f"{_W}pStyle", f"{_W}outlineLvl"
_HEADING_STYLE = re.compile(r"heading\s*([1-9])$")
_DOCX_INLINE_TEXT = {f"{_W}tab": "\t", f"{_W}br": "\n", f"{_W}cr": "\n", f"{_W}noBreakHyphen": "-"}
# AlternateContent repeats its Choice (e.g. a modern text box) in a Fallback for old readers.
_MC_FALLBACK = f"{_MC}Fallback"


def extract_docx(path: Path, max_chars: int) -> list[Section]:
    _check_zip_bomb(path)
    try:
        document = docx.Document(str(path))
    except Exception as exc:
        logger.info("unreadable DOCX: %r", exc)
        raise ExtractionError(MSG_DOCX_DAMAGED) from None
    sections = SectionBuilder(max_chars)
    levels = _heading_styles(document)
    for child in document.element.body:
        level = _heading_level(child, levels) if child.tag == _W_P else None
        if level is not None:
            sections.heading(level, _paragraph_text(child))
            continue
        for block in _block_texts([child]):
            sections.block(block)
        if sections.budget.exhausted:
            break
    return sections.build()


def _heading_styles(document: Any) -> dict[str, int]:
    """Paragraph style id -> heading level: "Title" 0, "Heading n" n, or the style's own
    outline level (Word's localised heading styles keep their English name or carry one)."""
    levels: dict[str, int] = {}
    for style in document.styles.element.iterchildren(f"{_W}style"):
        style_id = style.get(f"{_W}styleId")
        name_element = style.find(f"{_W}name")
        name = (name_element.get(_W_VAL) if name_element is not None else "") or ""
        name = name.strip().lower()
        match = _HEADING_STYLE.match(name)
        if style_id is None:
            continue
        if name == "title":
            levels[style_id] = 0
        elif match:
            levels[style_id] = int(match.group(1))
        else:
            outline = _outline_level(style)
            if outline is not None:
                levels[style_id] = outline
    return levels


def _heading_level(paragraph: Any, levels: dict[str, int]) -> int | None:
    properties = paragraph.find(_W_PPR)
    if properties is None:
        return None
    direct = _outline_level(paragraph)
    if direct is not None:
        return direct
    style = properties.find(_W_PSTYLE)
    return levels.get(style.get(_W_VAL)) if style is not None else None


def _outline_level(element: Any) -> int | None:
    """1-based level of a ``w:outlineLvl`` in the element's paragraph properties (9: body)."""
    properties = element.find(_W_PPR)
    outline = properties.find(_W_OUTLINE) if properties is not None else None
    value = outline.get(_W_VAL) if outline is not None else None
    if value is None or not value.isdigit() or int(value) >= 9:
        return None
    return int(value) + 1


def _check_zip_bomb(path: Path) -> None:
    """Reject archives that inflate beyond the limit before python-docx reads every part.

    Declared sizes are checked first (cheap), then each member is actually inflated with a cap,
    because the central directory can understate what the compressed stream produces.
    """
    limit = DOCX_MAX_TOTAL_MB * 1024 * 1024
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
    if len(members) > DOCX_MAX_MEMBERS:
        raise ExtractionError(MSG_DOCX_TOO_MANY_PARTS)
    if sum(member.file_size for member in members) > limit:
        raise ExtractionError(msg_docx_bomb(DOCX_MAX_TOTAL_MB))
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > _DOCX_SUSPICIOUS_MEMBER_BYTES and ratio > _DOCX_SUSPICIOUS_RATIO:
            raise ExtractionError(msg_docx_bomb(DOCX_MAX_TOTAL_MB))


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
                raise ExtractionError(msg_docx_bomb(DOCX_MAX_TOTAL_MB))
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

"""Extraction in this process: dispatch by type, then one cleaning and budget for all types.

Uploads are hostile input: a PDF can loop a parser forever, a 30 KB DOCX can inflate to
gigabytes, a text file can be in any encoding. ``extract_text`` never lets a library exception
escape (everything becomes an ``ExtractionError`` whose message a customer can act on); run it
through ``Sandbox`` to add a memory cap and a deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from app.rag.extract.csv_table import extract_csv
from app.rag.extract.decode import read_text
from app.rag.extract.html_text import extract_html
from app.rag.extract.markdown_text import extract_md
from app.rag.extract.messages import (
    MSG_EMPTY,
    MSG_UNREADABLE_FILE,
    MSG_UNSUPPORTED,
    ExtractionError,
    msg_generic,
    msg_memory,
)
from app.rag.extract.pdf import extract_pdf
from app.rag.extract.sections import Budget, Section
from app.rag.extract.word import extract_docx

logger = logging.getLogger(__name__)

SUPPORTED_TYPES: frozenset[str] = frozenset({"pdf", "docx", "html", "md", "txt", "csv"})

# Types with headings: one section per heading.
_SECTION_EXTRACTORS: dict[str, Callable[[Path, int], list[Section]]] = {
    "docx": extract_docx,
    "html": extract_html,
    "md": extract_md,
}
# Types without pages or headings: one section of at most max_chars characters.
_TEXT_EXTRACTORS: dict[str, Callable[[Path, int], str]] = {
    "txt": read_text,
    "csv": extract_csv,
}


def extract_text(
    path: Path,
    file_type: str,
    *,
    max_pages: int,
    max_chars: int,
    password: str | None = None,
) -> list[Section]:
    """Text of the file as sections: one per PDF page with text, one per heading in DOCX,
    HTML and Markdown, one for other types.

    ``password`` is only used for encrypted PDFs; without it the empty password is tried.
    Raises only ``ExtractionError``.
    """
    try:
        return extract_sections(
            path, file_type, max_pages=max_pages, max_chars=max_chars, password=password
        )
    except MemoryError:
        raise ExtractionError(msg_memory(None)) from None


def extract_sections(
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
            sections = extract_pdf(path, max_pages, max_chars, password)
        elif file_type in _SECTION_EXTRACTORS:
            sections = _SECTION_EXTRACTORS[file_type](path, max_chars)
        else:
            sections = [Section(_TEXT_EXTRACTORS[file_type](path, max_chars), None)]
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:
        # Parsers raise anything from KeyError to RecursionError on hostile input; the upload is
        # what is broken, so the customer gets a sentence and the log keeps the details.
        logger.warning("%s extraction failed: %r", file_type, exc, exc_info=True)
        raise ExtractionError(msg_generic(file_type)) from None
    sections = _clean_sections(sections, max_chars)
    if not sections:
        raise ExtractionError(MSG_EMPTY)
    return sections


def _clean_sections(sections: list[Section], max_chars: int) -> list[Section]:
    budget = Budget(max_chars)
    cleaned = []
    for section in sections:
        text = section.text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
        text = budget.take(text.strip())
        if text.strip():
            cleaned.append(Section(text, section.page, section.headings))
    return cleaned

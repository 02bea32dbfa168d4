"""PDF: the text layer of each page, with its page number."""

from __future__ import annotations

import logging
from pathlib import Path

import pypdf
from pypdf import PasswordType
from pypdf.errors import DependencyError

from app.rag.extract.messages import (
    MSG_PDF_CRYPTO,
    MSG_PDF_DAMAGED,
    MSG_PDF_NO_PAGES,
    MSG_PDF_NO_TEXT,
    MSG_PDF_PASSWORD,
    MSG_PDF_WRONG_PASSWORD,
    ExtractionError,
)
from app.rag.extract.sections import Budget, Section

logger = logging.getLogger(__name__)


def extract_pdf(path: Path, max_pages: int, max_chars: int, password: str | None) -> list[Section]:
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

    budget = Budget(max_chars)
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

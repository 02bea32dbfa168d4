"""The errors extraction raises and the sentences they carry.

Every message reaches the person who uploaded the file, so each one says what to do next.
"""

from __future__ import annotations


class ExtractionError(Exception):
    """A file we cannot turn into text; ``str(exc)`` is meant for the person who uploaded it."""


class ExtractorUnavailable(RuntimeError):
    """The parser process could not start: our problem, not the file's (retry later)."""


# The most parts a DOCX may hold: both type detection and the extractor refuse more.
DOCX_MAX_MEMBERS = 10_000
# The most a DOCX may inflate to.
DOCX_MAX_TOTAL_MB = 200

_LABELS = {
    "pdf": "PDF",
    "docx": "DOCX",
    "html": "HTML",
    "md": "Markdown",
    "txt": "text",
    "csv": "CSV",
}

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
    f"This DOCX file looks like a zip bomb: it holds more than {DOCX_MAX_MEMBERS:,} parts. "
    "Open it in Word, save it again and upload the new file."
)
MSG_UNREADABLE_FILE = "We could not read the uploaded file; upload it again."
# ExtractorUnavailable: the document is queued again, so these are about us, not the file.
MSG_WORKER_START = "The document parser failed to start; the document will be retried."
MSG_WORKER_STOPPED = "The document parser was stopped; the document will be retried."


def msg_docx_bomb(limit_mb: int) -> str:
    return (
        f"This DOCX file looks like a zip bomb: it decompresses to more than {limit_mb} MB. "
        "Remove large embedded images or split the document, then upload it again."
    )


def msg_timeout(seconds: float) -> str:
    return (
        f"Parsing this file took longer than {seconds:g} second{'' if seconds == 1 else 's'}; "
        "it may be damaged or too "
        "complex. Try splitting it into smaller files or saving it in a simpler format."
    )


def msg_memory(limit_mb: int | None) -> str:
    amount = f"more than {limit_mb} MB of memory" if limit_mb else "more memory than we allow"
    return f"Parsing this file needed {amount}; try splitting it into smaller files."


def msg_crashed(limit_mb: int) -> str:
    return (
        f"Parsing this file crashed the parser or needed more than {limit_mb} MB of memory; "
        "try splitting it into smaller files or saving it in a simpler format."
    )


def msg_generic(file_type: str) -> str:
    label = _LABELS.get(file_type, "uploaded")
    return (
        f"This {label} file could not be read; it may be damaged. "
        "Save it again from the program that made it and upload the new file."
    )

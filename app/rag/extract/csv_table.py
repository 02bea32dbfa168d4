"""CSV: one block per row, ``header: value; ...``; prose with commas stays plain text."""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from pathlib import Path

from app.rag.extract.decode import read_text
from app.rag.extract.sections import Budget

logger = logging.getLogger(__name__)

_CSV_DELIMITERS = ",;\t|"
_CSV_SNIFF_CHARS = 64 * 1024
# Below this share of rows agreeing on a field count, the file is prose with commas.
_CSV_MIN_CONSISTENCY = 0.6


def extract_csv(path: Path, max_chars: int) -> str:
    text = read_text(path, max_chars)
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
    """One block (blank-line separated) per row, ``header: value; ...``, so that each row
    stands on its own in a chunk."""
    budget = Budget(max_chars)
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
    return "\n\n".join(lines)


def _render_row(header: list[str], cells: list[str]) -> str:
    pairs = []
    for position, value in enumerate(cells):
        if not value:
            continue
        name = header[position] if position < len(header) else ""
        pairs.append(f"{name or f'column {position + 1}'}: {value}")
    return "; ".join(pairs)

"""Split extracted sections into chunks sized for the embedding model.

Two strategies (``CHUNKING``):

- ``structure`` (the default): a chunk follows the document's own blocks (paragraphs, list
  items, table rows, under one heading on one page). A block too long for the model's window
  is split (paragraph, line, sentence, clause, word boundaries, with overlap); blocks shorter
  than ``min_size`` are merged with the blocks after them (same heading, same page) until the
  chunk means something. Each chunk starts with its heading path ("Returns > Refunds"), so the
  heading is embedded and searchable with the text it introduces.
- ``recursive``: the section's text packed into chunks of up to ``chunk_size``, split at the
  coarsest boundary that fits, with overlap; short paragraphs are merged, headings ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from app.rag.extract import Section

STRATEGIES = ("structure", "recursive")
# Coarsest first: paragraphs, lines, then sentence ends in Latin and CJK punctuation (CJK text
# has no spaces, so without "。" a Chinese page would only split at arbitrary characters),
# then clauses, words, and characters as the last resort.
SEPARATORS = ["\n\n", "\n", ". ", "。", "！", "？", "; ", ", ", " ", ""]
HEADING_SEPARATOR = " > "
_BLANK_LINES = re.compile(r"\n[^\S\n]*\n\s*")


@dataclass(frozen=True)
class Chunk:
    text: str  # what is embedded, indexed and shown: the heading path, then the body
    index: int  # 0-based, across the whole document
    page: int | None
    heading: str = ""  # "Returns > Refunds"; empty without headings


def chunk_sections(
    sections: list[Section],
    *,
    chunk_size: int,
    chunk_overlap: int,
    length_function: Callable[[str], int] = len,
    strategy: str = "structure",
    min_size: int = 0,
) -> list[Chunk]:
    """Chunks of at most ``chunk_size`` units of ``length_function`` (e.g. tokens).

    Sections are chunked one at a time so that every chunk keeps its page and heading; text
    is never merged across pages or headings.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError("chunk_overlap must be at least 0 and smaller than chunk_size")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
    chunks: list[Chunk] = []
    for section in sections:
        heading = HEADING_SEPARATOR.join(section.headings) if strategy == "structure" else ""
        # The heading is part of what the model reads: it takes its share of the window,
        # but never more than half of it.
        room = chunk_size
        if heading:
            heading = _fit(heading, chunk_size // 2, length_function)
            room = max(chunk_size - length_function(heading) - 1, chunk_size // 2)
        splitter = _splitter(room, min(chunk_overlap, room // 2), length_function)
        if strategy == "structure":
            bodies = _structured(section.text, room, min_size, splitter, length_function)
        else:
            bodies = splitter.split_text(section.text)
        for body in bodies:
            body = body.strip()
            if body:
                text = f"{heading}\n\n{body}" if heading else body
                chunks.append(Chunk(text, len(chunks), section.page, heading))
    return chunks


def _splitter(
    size: int, overlap: int, length_function: Callable[[str], int]
) -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter(
        separators=SEPARATORS,
        # "end" keeps ". " or "。" with the sentence it closes instead of opening the next one.
        keep_separator="end",
        chunk_size=size,
        chunk_overlap=overlap,
        length_function=length_function,
        strip_whitespace=True,
    )


def _structured(
    text: str,
    room: int,
    min_size: int,
    splitter: RecursiveCharacterTextSplitter,
    length_function: Callable[[str], int],
) -> list[str]:
    """The section's blocks, long ones split, short ones merged with what follows."""
    pieces: list[tuple[str, int]] = []
    for block in _BLANK_LINES.split(text):
        block = block.strip()
        if not block:
            continue
        length = length_function(block)
        if length <= room:
            pieces.append((block, length))
        else:
            pieces.extend((part, length_function(part)) for part in splitter.split_text(block))
    merged: list[tuple[str, int]] = []
    for piece, length in pieces:
        if merged and merged[-1][1] < min_size and merged[-1][1] + length + 1 <= room:
            previous, previous_length = merged.pop()
            merged.append((f"{previous}\n\n{piece}", previous_length + length + 1))
        else:
            merged.append((piece, length))
    # A short last piece joins the one before it when they fit together.
    if len(merged) > 1 and merged[-1][1] < min_size:
        (previous, previous_length), (last, length) = merged[-2], merged[-1]
        if previous_length + length + 1 <= room:
            merged[-2:] = [(f"{previous}\n\n{last}", previous_length + length + 1)]
    return [piece for piece, _ in merged]


def _fit(text: str, limit: int, length_function: Callable[[str], int]) -> str:
    """``text`` cut at a word boundary to at most ``limit`` units."""
    if length_function(text) <= limit:
        return text
    words = text.split(" ")
    while len(words) > 1 and length_function(" ".join(words) + " …") > limit:
        words.pop()
    return " ".join(words) + " …"

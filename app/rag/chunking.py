"""Split extracted sections into overlapping chunks sized for the embedding model."""

from collections.abc import Callable
from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from app.rag.extract import Section

# Coarsest first: paragraphs, lines, then sentence ends in Latin and CJK punctuation (CJK text
# has no spaces, so without "。" a Chinese page would only split at arbitrary characters),
# then clauses, words, and characters as the last resort.
SEPARATORS = ["\n\n", "\n", ". ", "。", "！", "？", "; ", ", ", " ", ""]


@dataclass(frozen=True)
class Chunk:
    text: str
    index: int  # 0-based, across the whole document
    page: int | None


def chunk_sections(
    sections: list[Section],
    *,
    chunk_size: int,
    chunk_overlap: int,
    length_function: Callable[[str], int] = len,
) -> list[Chunk]:
    """Chunks of at most ``chunk_size`` units of ``length_function`` (e.g. tokens).

    Sections are split one at a time so that every chunk keeps the page it came from; text is
    never merged across pages.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError("chunk_overlap must be at least 0 and smaller than chunk_size")
    splitter = RecursiveCharacterTextSplitter(
        separators=SEPARATORS,
        # "end" keeps ". " or "。" with the sentence it closes instead of opening the next one.
        keep_separator="end",
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        length_function=length_function,
        strip_whitespace=True,
    )
    chunks: list[Chunk] = []
    for section in sections:
        for text in splitter.split_text(section.text):
            text = text.strip()
            if text:
                chunks.append(Chunk(text=text, index=len(chunks), page=section.page))
    return chunks

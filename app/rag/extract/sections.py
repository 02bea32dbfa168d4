"""What extraction produces, and the character budget every extractor fills."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    """A span of extracted text; ``page`` is the 1-based PDF page, ``None`` for other types."""

    text: str
    page: int | None


class Budget:
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

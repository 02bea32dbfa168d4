"""What extraction produces, and the character budget every extractor fills."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    """A span of extracted text under one heading on one page.

    ``page`` is the 1-based PDF page, ``None`` for other types; ``headings`` the titles of the
    headings the text sits under, outermost first (``("Returns", "Refunds")``), empty where
    the format has none or the text comes before the first heading. Blocks (paragraphs, list
    items, table rows) are separated by a blank line.
    """

    text: str
    page: int | None
    headings: tuple[str, ...] = ()


# A heading longer than this is a paragraph set in a heading style, not a title.
MAX_HEADING_CHARS = 200


class HeadingPath:
    """The headings above the current position: a new heading of level n replaces every
    heading of level n or deeper."""

    def __init__(self) -> None:
        self._levels: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        title = " ".join(title.split())[:MAX_HEADING_CHARS]
        self._levels = [(lv, t) for lv, t in self._levels if lv < level]
        if title:
            self._levels.append((level, title))

    @property
    def titles(self) -> tuple[str, ...]:
        return tuple(title for _, title in self._levels)


class SectionBuilder:
    """Blocks collected into one ``Section`` per heading, within a character budget."""

    def __init__(self, max_chars: int) -> None:
        self.budget = Budget(max_chars)
        self.path = HeadingPath()
        self.sections: list[Section] = []
        self._blocks: list[str] = []
        self._titles: list[str] = []

    def heading(self, level: int, title: str) -> None:
        self._flush()
        self.path.enter(level, title)
        if title.strip():
            self._titles.append(" ".join(title.split())[:MAX_HEADING_CHARS])

    def block(self, text: str) -> None:
        text = text.strip()
        if text and not self.budget.exhausted:
            self._blocks.append(self.budget.take(text))

    def build(self) -> list[Section]:
        """The sections; a document of headings alone keeps them as its text."""
        self._flush()
        if not self.sections and self._titles:
            text = self.budget.take("\n\n".join(self._titles))
            return [Section(text, None)]
        return self.sections

    def _flush(self) -> None:
        if self._blocks:
            self.sections.append(Section("\n\n".join(self._blocks), None, self.path.titles))
            self._blocks = []


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

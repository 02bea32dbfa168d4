"""Markdown: the text without markup noise (badges, images, link targets), code kept verbatim,
one section per heading with the heading path, paragraphs and list items as blocks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from app.rag.extract.decode import read_text
from app.rag.extract.sections import Section, SectionBuilder

_MD_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t](.*))?$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])[ \t]+\S")
# Every pattern stops at a bracket, parenthesis, angle bracket or newline, so a hostile file
# full of unclosed "[" or "(" costs linear time instead of re-scanning to the end each time.
_LINK_TARGET = r"(?:\([^()\n]*\)|\[[^\[\]\n]*\])"
_MD_NOISE = [
    (re.compile(r"<img\b[^<>]*>", re.IGNORECASE), ""),
    (re.compile(r"!\[[^\[\]\n]*\]" + _LINK_TARGET), ""),  # images, badges included
    (re.compile(r"\[[ \t]*\]" + _LINK_TARGET), ""),  # links left empty by the above
    (re.compile(r"\[([^\[\]\n]+)\]" + _LINK_TARGET), r"\1"),  # link -> its text
    (re.compile(r"^ {0,3}\[[^\[\]\n]+\]:[ \t]*\S.*$", re.MULTILINE), ""),  # link definitions
]


def extract_md(path: Path, max_chars: int) -> list[Section]:
    sections = SectionBuilder(max_chars)
    for is_code, run in _md_blocks(read_text(path, max_chars)):
        if is_code:
            sections.block(run)
            continue
        for level, text in _structure(_drop_html_comments(run)):
            if level:
                sections.heading(level, _strip_md_noise(text))
            else:
                sections.block(_strip_md_noise(text))
    return sections.build()


def _structure(text: str) -> Iterator[tuple[int, str]]:
    """(heading level, title) for headings, (0, text) for paragraphs and list items."""
    block: list[str] = []

    def flush() -> Iterator[tuple[int, str]]:
        if any(line.strip() for line in block):
            yield 0, "\n".join(block)
        block.clear()

    for line in text.split("\n"):
        heading = _ATX_HEADING.match(line)
        underline = _SETEXT_UNDERLINE.match(line)
        if heading:
            yield from flush()
            yield len(heading.group(1)), _atx_title(heading.group(2) or "")
        elif underline and len(block) == 1 and block[0].strip():
            # "Title" over "=====" / "-----": the paragraph line above is the heading
            title = block.pop()
            yield 1 if underline.group(1)[0] == "=" else 2, title
        elif not line.strip():
            yield from flush()
        elif _LIST_ITEM.match(line) and block:
            yield from flush()
            block.append(line)
        else:
            block.append(line)
    yield from flush()


def _atx_title(text: str) -> str:
    """The title without its optional closing sequence ("## Title ##")."""
    text = text.strip()
    bare = text.rstrip("#")
    if not bare or bare[-1] in " \t":
        text = bare.strip()
    return text


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

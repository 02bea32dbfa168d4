"""Markdown: the text without markup noise (badges, images, link targets), code kept verbatim."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from app.rag.extract.decode import read_text

_MD_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Every pattern stops at a bracket, parenthesis, angle bracket or newline, so a hostile file
# full of unclosed "[" or "(" costs linear time instead of re-scanning to the end each time.
_LINK_TARGET = r"(?:\([^()\n]*\)|\[[^\[\]\n]*\])"
_MD_NOISE = [
    (re.compile(r"<img\b[^<>]*>", re.IGNORECASE), ""),
    (re.compile(r"!\[[^\[\]\n]*\]" + _LINK_TARGET), ""),  # images, badges included
    (re.compile(r"\[[ \t]*\]" + _LINK_TARGET), ""),  # links left empty by the above
    (re.compile(r"\[([^\[\]\n]+)\]" + _LINK_TARGET), r"\1"),  # link -> its text
    (re.compile(r"^ {0,3}\[[^\[\]\n]+\]:[ \t]*\S.*$", re.MULTILINE), ""),  # link definitions
    (re.compile(r"^ {0,3}#{1,6}[ \t]+", re.MULTILINE), ""),  # heading marks
]
_BLANK_RUNS = re.compile(r"\n{3,}")


def extract_md(path: Path, max_chars: int) -> str:
    text = read_text(path, max_chars)
    pieces = [block if is_code else _strip_md_noise(block) for is_code, block in _md_blocks(text)]
    return _BLANK_RUNS.sub("\n\n", "".join(pieces))


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
    text = _drop_html_comments(text)
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

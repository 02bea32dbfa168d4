"""HTML: the text a reader sees, without the site's chrome: one section per heading (h1-h6)
with its heading path, paragraphs, list items and table rows (cells joined by " | ") as
blocks."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from bs4 import BeautifulSoup
from bs4.element import CData, NavigableString, PageElement, Tag

from app.rag.extract.decode import bom_encoding, decode, incremental_decode, read_prefix
from app.rag.extract.sections import MAX_HEADING_CHARS, Section, SectionBuilder

logger = logging.getLogger(__name__)

_HTML_DROP_TAGS = {
    "head", "script", "style", "noscript", "template", "nav", "aside", "form", "svg",
    "iframe", "object", "embed", "canvas", "button", "select", "dialog",
}  # fmt: skip
_HTML_DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search"}
_HTML_BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
    "li", "dl", "dt", "dd", "table", "caption", "thead", "tbody", "tfoot", "tr",
    "blockquote", "pre", "figure", "figcaption", "address", "hr", "details", "summary",
    "header", "footer",
}  # fmt: skip
_HTML_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([a-zA-Z0-9_.:-]+)", re.IGNORECASE)
# As browsers do (WHATWG encoding spec): these labels mean their superset in practice.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
}
_HTML_MARKUP_FACTOR = 20
_HTML_MIN_BYTES = 10 * 1024 * 1024
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_CELLS = {"td", "th"}
_CELL_END = "\x1f"  # marks the end of a table cell until the row is tidied
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_SPACES = re.compile(r"[^\S\n]+")


def extract_html(path: Path, max_chars: int) -> list[Section]:
    # Markup outweighs text, so read more than max_chars, but still a bounded amount.
    data, truncated = read_prefix(path, max(max_chars * _HTML_MARKUP_FACTOR, _HTML_MIN_BYTES))
    soup = BeautifulSoup(_decode_html(data, final=not truncated), "lxml")
    return _page_sections(soup, max_chars)


def _decode_html(data: bytes, *, final: bool) -> str:
    """Bytes as text: a BOM wins, then a <meta> charset, then detection.

    Only <meta> declarations count: a <script charset="gbk"> describes the script file it
    points to, not this page.
    """
    if bom_encoding(data) is None:
        match = _META_CHARSET.search(data[:4096])
        if match:
            label = match.group(1).decode("ascii", errors="replace").lower()
            encoding = _CHARSET_ALIASES.get(label, label)
            try:
                return incremental_decode(data, encoding, errors="strict", final=final)
            except (LookupError, UnicodeDecodeError):
                logger.info("HTML declares charset %r but does not match it", label)
    return decode(data, final=final)


def _visible_text(root: Tag, sections: SectionBuilder) -> None:
    """Text a reader sees into ``sections``: a blank line around every block element, a new
    section at every heading.

    An explicit stack instead of recursion or tree edits: hostile pages nest elements 100,000
    deep, which overflows recursion and makes BeautifulSoup's insert/decompose quadratic.
    """
    parts: list[str] = []
    # (node, inside an <article>/<main>, is the closing marker of a block or cell)
    stack: list[tuple[PageElement, bool, bool]] = [(root, False, False)]
    while stack:
        node, in_article, closing = stack.pop()
        if closing:
            parts.append(_CELL_END if isinstance(node, Tag) and node.name in _CELLS else "\n\n")
        elif isinstance(node, Tag):
            if node.name == "br":
                parts.append("\n")
            elif not _is_invisible(node, in_article):
                in_article = in_article or _is_article(node)
                if node.name in _HEADINGS:
                    _add_blocks(sections, "".join(parts))
                    parts = []
                    title = node.get_text(" ")[: MAX_HEADING_CHARS * 4]
                    sections.heading(_HEADINGS[node.name], title)
                    continue
                if node.name in _HTML_BLOCK_TAGS:
                    parts.append("\n\n")
                    stack.append((node, in_article, True))
                elif node.name in _CELLS:
                    stack.append((node, in_article, True))
                stack.extend((child, in_article, False) for child in reversed(node.contents))
        elif type(node) in (NavigableString, CData):  # not comments, doctypes, script text
            parts.append(str(node))
    _add_blocks(sections, "".join(parts))


def _add_blocks(sections: SectionBuilder, text: str) -> None:
    for raw in _BLANK_LINES.split(text):
        lines = (_tidy_line(line) for line in raw.split("\n"))
        sections.block("\n".join(line for line in lines if line))


def _tidy_line(line: str) -> str:
    """Spaces collapsed; a table row's cells joined with " | "."""
    cells = (_SPACES.sub(" ", cell).strip() for cell in line.split(_CELL_END))
    return " | ".join(cell for cell in cells if cell)


def _is_article(tag: Tag) -> bool:
    return tag.name in ("article", "main") or tag.get("role") == "main"


def _is_invisible(tag: Tag, in_article: bool) -> bool:
    if tag.name in _HTML_DROP_TAGS:
        return True
    if tag.name in ("header", "footer"):
        # A header or footer inside an article introduces that article (headline, byline);
        # only the page-level ones are site chrome.
        return not in_article
    if tag.get("role") in _HTML_DROP_ROLES or tag.get("aria-hidden") == "true":
        return True
    if tag.has_attr("hidden"):
        return True
    style = tag.get("style")
    return isinstance(style, str) and _HTML_HIDDEN_STYLE.search(style) is not None


def _page_sections(soup: BeautifulSoup, max_chars: int) -> list[Section]:
    """Visible text of the page's <main> (or role=main) when it has any: by definition it
    holds the page's own content, and everything around it is site chrome."""
    main = soup.find("main") or soup.find(role="main")
    if isinstance(main, Tag):
        sections = SectionBuilder(max_chars)
        _visible_text(main, sections)
        found = sections.build()
        if found:
            return found
    sections = SectionBuilder(max_chars)
    _visible_text(soup, sections)
    return sections.build()

"""HTML: the text a reader sees, one line per block, without the site's chrome."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from bs4 import BeautifulSoup
from bs4.element import CData, NavigableString, PageElement, Tag

from app.rag.extract.decode import bom_encoding, decode, incremental_decode, read_prefix

logger = logging.getLogger(__name__)

_HTML_DROP_TAGS = {
    "head", "script", "style", "noscript", "template", "nav", "aside", "form", "svg",
    "iframe", "object", "embed", "canvas", "button", "select", "dialog",
}  # fmt: skip
_HTML_DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search"}
_HTML_BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
    "li", "dl", "dt", "dd", "table", "caption", "thead", "tbody", "tfoot", "tr", "td", "th",
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
_SPACES = re.compile(r"[^\S\n]+")


def extract_html(path: Path, max_chars: int) -> str:
    # Markup outweighs text, so read more than max_chars, but still a bounded amount.
    data, truncated = read_prefix(path, max(max_chars * _HTML_MARKUP_FACTOR, _HTML_MIN_BYTES))
    soup = BeautifulSoup(_decode_html(data, final=not truncated), "lxml")
    return _tidy_lines(_page_text(soup))[:max_chars]


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


def _visible_text(root: Tag) -> str:
    """Text a reader sees, with a line break around every block element.

    An explicit stack instead of recursion or tree edits: hostile pages nest elements 100,000
    deep, which overflows recursion and makes BeautifulSoup's insert/decompose quadratic.
    """
    parts: list[str] = []
    # (node, inside an <article>/<main>, is the closing marker of a block)
    stack: list[tuple[PageElement, bool, bool]] = [(root, False, False)]
    while stack:
        node, in_article, closing = stack.pop()
        if closing:
            parts.append("\n")
        elif isinstance(node, Tag):
            if node.name == "br":
                parts.append("\n")
            elif not _is_invisible(node, in_article):
                in_article = in_article or _is_article(node)
                if node.name in _HTML_BLOCK_TAGS:
                    parts.append("\n")
                    stack.append((node, in_article, True))
                stack.extend((child, in_article, False) for child in reversed(node.contents))
        elif type(node) in (NavigableString, CData):  # not comments, doctypes, script text
            parts.append(str(node))
    return "".join(parts)


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


def _page_text(soup: BeautifulSoup) -> str:
    """Visible text of the page's <main> (or role=main) when it has any: by definition it
    holds the page's own content, and everything around it is site chrome."""
    main = soup.find("main") or soup.find(role="main")
    if isinstance(main, Tag):
        text = _visible_text(main)
        if text.strip():
            return text
    return _visible_text(soup)


def _tidy_lines(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)

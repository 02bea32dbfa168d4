"""Fixture generators: each writes one document to a given path and returns that path.

Every generator takes the text to embed from the caller, so a test can check that exactly that
text comes back out of extraction. Nothing here needs the network or extra packages: PDFs are
written byte by byte (encrypted ones by pypdf, whose AES uses ``cryptography``, already installed
through python-jose), DOCX files with python-docx, zip bombs by hand.
"""

import csv
import functools
import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docx
from docx.table import Table
from pypdf import PdfReader, PdfWriter

# Strings placed only in parts of an HTML page a reader never sees (scripts, menus, hidden
# blocks): none of them may survive text extraction.
HTML_NOISE_MARKERS = (
    "NOISE_SCRIPT_a81",
    "NOISE_STYLE_b72",
    "NOISE_NAV_c63",
    "NOISE_HEADER_d54",
    "NOISE_FOOTER_e45",
    "NOISE_ASIDE_f36",
    "NOISE_NOSCRIPT_g27",
    "NOISE_FORM_h18",
    "NOISE_HIDDEN_i09",
    "NOISE_ARIA_j90",
    "NOISE_ROLE_NAV_k81",
    "NOISE_TEMPLATE_l72",
    "NOISE_IFRAME_m63",
)

# --------------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------------

_PDF_LINE_CHARS = 90


def _pdf_document(objects: Sequence[bytes]) -> bytes:
    """A PDF whose object N is ``objects[N - 1]``; object 1 must be the catalog."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_at,
    )
    return bytes(out)


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def _pdf_string(text: str) -> bytes:
    # WinAnsiEncoding is close to cp1252; characters outside it become "?".
    raw = text.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _wrap(text: str) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            if line and len(line) + 1 + len(word) > _PDF_LINE_CHARS:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines


def _text_content(text: str) -> bytes:
    shows = b" T*\n".join(_pdf_string(line) + b" Tj" for line in _wrap(text))
    return b"BT\n/F1 11 Tf\n14 TL\n50 780 Td\n" + shows + b"\nET"


def _pages_pdf(
    contents: Sequence[bytes], resources: bytes, extra_objects: Sequence[bytes] = ()
) -> bytes:
    """Catalog, page tree, Helvetica, a page object and a content stream per page, then
    ``extra_objects`` (numbered from 4 + 2 * len(contents))."""
    first_page = 4
    kids = b" ".join(b"%d 0 R" % (first_page + 2 * i) for i in range(len(contents)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(contents)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for index, content in enumerate(contents):
        content_ref = first_page + 2 * index + 1
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources %s "
            b"/Contents %d 0 R >>" % (resources, content_ref)
        )
        objects.append(_stream(content))
    return _pdf_document([*objects, *extra_objects])


def make_pdf(path: Path, pages: Sequence[str]) -> Path:
    """A PDF with a real text layer: one page per string (an empty string gives a blank page)."""
    contents = [_text_content(text) if text else b"" for text in pages]
    path.write_bytes(_pages_pdf(contents, b"<< /Font << /F1 3 0 R >> >>"))
    return path


def make_encrypted_pdf(
    path: Path, text: str, password: str, *, owner_password: str = "owner-secret"
) -> Path:
    """``text`` on one page, encrypted (AES-128). ``password=""`` gives a PDF that opens without
    a password but is still encrypted (permissions only), as many real PDFs are."""
    plain = io.BytesIO(_pages_pdf([_text_content(text)], b"<< /Font << /F1 3 0 R >> >>"))
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password=password, owner_password=owner_password, algorithm="AES-128")
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def make_image_only_pdf(path: Path, *, pages: int = 1) -> Path:
    """Pages that only paint an image (like a scan): no text layer at all."""
    image = _stream(
        bytes([0, 255, 255, 0]),
        b"/Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 ",
    )
    resources = b"<< /XObject << /Im1 %d 0 R >> >>" % (4 + 2 * pages)
    contents = [b"q 400 0 0 400 100 300 cm /Im1 Do Q"] * pages
    path.write_bytes(_pages_pdf(contents, resources, [image]))
    return path


def make_slow_pdf(path: Path, *, operations: int = 200_000) -> Path:
    """A valid one-page PDF whose content stream has ``operations`` text-show operators: pypdf
    needs seconds to extract it (about 5 s for the default), a stand-in for hostile PDFs that
    make parsers spin."""
    content = b"BT /F1 11 Tf 50 780 Td " + b"(x) Tj 1 0 Td " * operations + b"ET"
    path.write_bytes(_pages_pdf([content], b"<< /Font << /F1 3 0 R >> >>"))
    return path


def make_corrupt_pdf(path: Path) -> Path:
    """Starts like a PDF, then breaks off: no cross-reference table, trailer or %%EOF."""
    path.write_bytes(
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Type /Pa"
        + bytes(range(256)) * 4
    )
    return path


# --------------------------------------------------------------------------------------------
# DOCX
# --------------------------------------------------------------------------------------------


def make_docx(
    path: Path,
    paragraphs: Sequence[str],
    table_rows: Sequence[Sequence[str]] = (),
    *,
    nested_rows: Sequence[Sequence[str]] = (),
    merged_text: str | None = None,
    trailing_paragraph: str | None = None,
) -> Path:
    """Paragraphs, then a table of ``table_rows``.

    ``nested_rows`` puts a table inside the first cell of that table. ``merged_text`` adds a
    3x3 table whose top-left cell is merged across two columns and two rows and holds that
    text (Word stores it once, readers that walk the grid see it four times).
    ``trailing_paragraph`` comes after all tables, to check document order.
    """
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if table_rows:
        table = _add_table(document, table_rows)
        if nested_rows:
            _add_table(table.cell(0, 0), nested_rows)
    if merged_text is not None:
        grid = document.add_table(rows=3, cols=3)
        merged = grid.cell(0, 0).merge(grid.cell(1, 1))
        merged.text = merged_text
        grid.cell(2, 2).text = "corner cell"
    if trailing_paragraph is not None:
        document.add_paragraph(trailing_paragraph)
    document.save(str(path))
    return path


def _add_table(container: Any, rows: Sequence[Sequence[str]]) -> Table:
    """A table in a document or in a table cell (both have add_table)."""
    columns = max(len(row) for row in rows)
    table: Table = container.add_table(rows=len(rows), cols=columns)
    for row_index, row in enumerate(rows):
        for column_index, value in enumerate(row):
            table.cell(row_index, column_index).text = value
    return table


_CONTENT_TYPES = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    b'<Default Extension="rels" '
    b'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    b'<Default Extension="xml" ContentType="application/xml"/>'
    b'<Override PartName="/word/document.xml" ContentType="application/'
    b'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_ROOT_RELS = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    b'relationships/officeDocument" Target="word/document.xml"/></Relationships>'
)
_BOMB_BLOCK = 16 * 1024 * 1024


def make_zip_bomb_docx(
    path: Path, *, inflated_bytes: int = 2 * 1024**3, lie_about_size: bool = False
) -> Path:
    """A .docx-shaped zip whose word/document.xml inflates to ``inflated_bytes`` of spaces
    (2 GiB by default) from about 2 MB on disk.

    With ``lie_about_size`` the zip headers claim the member is only 4 KB, so a guard that
    trusts declared sizes lets it through (zipfile itself then stops at 4 KB and fails the
    CRC check, but a streaming inflater would run to the end).
    """
    if inflated_bytes % _BOMB_BLOCK:
        raise ValueError(f"inflated_bytes must be a multiple of {_BOMB_BLOCK}")
    blocks = inflated_bytes // _BOMB_BLOCK
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    # After a full flush the compressor starts from scratch, so every block compresses to the
    # same bytes: compress one block and repeat it.
    segment = compressor.compress(b" " * _BOMB_BLOCK) + compressor.flush(zlib.Z_FULL_FLUSH)
    deflated = segment * blocks + compressor.flush()
    declared = 4096 if lie_about_size else inflated_bytes
    members = [
        _deflated_member("[Content_Types].xml", _CONTENT_TYPES),
        _deflated_member("_rels/.rels", _ROOT_RELS),
        ("word/document.xml", deflated, _spaces_crc(blocks), declared),
    ]
    path.write_bytes(_zip_archive(members))
    return path


@functools.lru_cache(maxsize=4)
def _spaces_crc(blocks: int) -> int:
    block = b" " * _BOMB_BLOCK
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    return crc


def _deflated_member(name: str, data: bytes) -> tuple[str, bytes, int, int]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return name, compressor.compress(data) + compressor.flush(), zlib.crc32(data), len(data)


def _zip_archive(members: Sequence[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of already-deflated members: (name, deflated bytes, crc32, declared size)."""
    out = bytearray()
    directory = bytearray()
    dos_time, dos_date = 0, (2024 - 1980) << 9 | 1 << 5 | 1
    for name, deflated, crc, size in members:
        encoded = name.encode()
        offset = len(out)
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, dos_time, dos_date,
            crc, len(deflated), size, len(encoded), 0,
        )  # fmt: skip
        out += encoded + deflated
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, dos_time, dos_date,
            crc, len(deflated), size, len(encoded), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        directory += encoded
    directory_at = len(out)
    out += directory
    out += struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
        len(directory), directory_at, 0,
    )  # fmt: skip
    return bytes(out)


# --------------------------------------------------------------------------------------------
# HTML, Markdown, CSV, plain text
# --------------------------------------------------------------------------------------------


def make_html(
    path: Path,
    sentence: str,
    *,
    title: str = "Test page",
    heading: str = "Main heading",
    list_items: Sequence[str] = ("First item", "Second item"),
    table_cells: Sequence[str] = ("Cell one", "Cell two"),
    charset: str | None = "utf-8",
    encoding: str = "utf-8",
    noise: bool = True,
    main_landmark: bool = True,
) -> Path:
    """A page with ``sentence`` in its article, wrapped in the chrome and scripts of a real
    site (each piece of noise carries one of HTML_NOISE_MARKERS; some of it sits inside the
    article itself). The heading sits in the article's own <header>, which is content.

    ``charset`` is what the page declares in <meta>, ``encoding`` what it is written in;
    making them differ models a lying page. ``main_landmark`` wraps the article in <main>.
    """
    meta = f'<meta charset="{charset}">' if charset else ""
    words = sentence.split(" ")
    # The middle of the sentence sits in inline tags, which must not break it into lines.
    inline = (
        " ".join(words[:1] + [f"<b>{words[1]}</b>"] + words[2:]) if len(words) > 2 else sentence
    )
    items = "".join(f"<li>{item}</li>" for item in list_items)
    cells = "".join(f"<td>{cell}</td>" for cell in table_cells)
    head, top, inside, bottom = _html_noise() if noise else ("", "", "", "")
    article = (
        f"<article><header><h1>{heading}</h1></header>\n<p>{inline}</p>{inside}"
        f"<ul>{items}</ul><table><tr>{cells}</tr></table></article>"
    )
    if main_landmark:
        article = f"<main>{article}</main>"
    page = (
        f"<!DOCTYPE html>\n<html><head>{meta}<title>{title}</title>{head}</head>\n"
        f"<body>{top}{article}{bottom}</body></html>\n"
    )
    path.write_bytes(page.encode(encoding))
    return path


def _html_noise() -> tuple[str, str, str, str]:
    """Noise for the <head>, before the article, inside it, and after it."""
    (script, style, nav, header, footer, aside, noscript, form, hidden, aria, role_nav,
     template, iframe) = HTML_NOISE_MARKERS  # fmt: skip
    head = f"<style>body {{ color: red; }} /* {style} */</style>"
    top = (
        f"<header><a href='/'>{header}</a></header><nav><a href='/a'>{nav}</a></nav>"
        f'<div role="navigation">{role_nav}</div>'
    )
    inside = (
        f'<script type="text/javascript" charset="gbk">document.write("{script}")</script>'
        f"<noscript>{noscript}</noscript><aside>{aside}</aside>"
        f"<form><label>{form}</label><input name='q'></form>"
        f'<div hidden>{hidden}</div><div style="display: none">{hidden}</div>'
        f'<span aria-hidden="true">{aria}</span><template><p>{template}</p></template>'
        f"<iframe>{iframe}</iframe>"
    )
    bottom = f"<footer>{footer}</footer>"
    return head, top, inside, bottom


def make_md(
    path: Path,
    sentence: str,
    *,
    heading: str = "Project title",
    code: str = '<div class="demo">\n  <p>Code sample text</p>\n</div>',
) -> Path:
    """A README-style file: badges, an <img>, a heading, ``sentence`` with a link in it, and
    a fenced code block holding ``code`` (HTML that must come out verbatim)."""
    text = (
        "<!-- SPDX-License-Identifier: MIT -->\n"
        '<img src="docs/logo.svg" width="200" alt="Logo">\n\n'
        "[![Build](https://ci.example.com/badge.svg)](https://ci.example.com) "
        "![PyPI][pypi]\n\n"
        "[pypi]: https://img.shields.io/pypi/v/example.svg\n\n"
        f"# {heading}\n\n"
        f"{sentence} See [the documentation](https://docs.example.com) for more.\n\n"
        f"```html\n{code}\n```\n"
    )
    path.write_text(text, encoding="utf-8")
    return path


def make_csv(
    path: Path,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    blank_rows: bool = True,
) -> Path:
    """A CSV with quoting where needed (values with the delimiter, quotes or newlines) and,
    by default, a blank line and a row of empty cells that readers should skip."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    for index, row in enumerate(rows):
        writer.writerow(row)
        if blank_rows and index == 0:
            buffer.write("\r\n")
            writer.writerow([""] * len(header))
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def make_txt(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def make_utf16_txt(path: Path, text: str) -> Path:
    """UTF-16 little-endian with a byte order mark, as Windows Notepad saves "Unicode"."""
    path.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    return path


def make_latin1_txt(path: Path, text: str) -> Path:
    """ISO-8859-1 bytes (not valid UTF-8 as soon as ``text`` has an accent)."""
    path.write_bytes(text.encode("latin-1"))
    return path

"""Text extraction: type detection, every format, hostile files, and the sandbox of worker
processes.

Timing figures are printed, not asserted here (these tests check outcomes and their order):
bench/hostile_files.py times the hostile files, bench/failfast.py the sandbox's timeout.
"""

import codecs
import csv
import multiprocessing
import os
import re
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pebble
import pytest

from app.rag.extract import (
    SUPPORTED_TYPES,
    ExtractionError,
    ExtractorUnavailable,
    Sandbox,
    Section,
    detect_file_type,
    extract_text,
)
from app.rag.extract.decode import decode_text
from tests import docgen

LIMITS = {"max_pages": 50, "max_chars": 1_000_000}
SENTENCE = "The lighthouse keeper counted forty-two ships before dawn."


def extract(path: Path, file_type: str | None = None, **kwargs: object) -> list[Section]:
    options = {**LIMITS, **kwargs}
    return extract_text(path, file_type or _detect(path), **options)  # type: ignore[arg-type]


def _detect(path: Path) -> str:
    file_type = detect_file_type(path, path.name)
    assert file_type is not None, f"{path.name} not detected"
    return file_type


def full_text(sections: list[Section]) -> str:
    """The sections' text, each after its heading path (one line per heading)."""
    return "\n".join("\n".join([*section.headings, section.text]) for section in sections)


def error_of(path: Path, file_type: str | None = None, **kwargs: object) -> str:
    with pytest.raises(ExtractionError) as caught:
        extract(path, file_type, **kwargs)
    return str(caught.value)


def assert_human_sentence(message: str) -> None:
    """Messages reach customers: a capitalised sentence with a full stop, no exception repr."""
    assert message[:1].isupper() and message.endswith("."), message
    assert len(message.split()) >= 5, message
    assert "Error(" not in message and "Traceback" not in message, message


# --------------------------------------------------------------------------------------------
# detect_file_type
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.md", b"# Title\n\nSome *markdown*.", "md"),
        ("notes.markdown", b"# Title", "md"),
        ("data.csv", b"a,b\n1,2\n", "csv"),
        ("page.htm", b"<p>just a fragment</p>", "html"),
        ("page.html", b"<div>fragment</div>", "html"),
        ("readme", b"plain words", "txt"),
        ("script.py", b"print('hello')\n", "txt"),
        ("looks-like-text.txt", b"  \n<!DOCTYPE html><html><body>x</body></html>", "html"),
        ("commented.txt", b"<!-- saved page -->\n<HTML><BODY>x</BODY></HTML>", "html"),
        ("xml-decl.txt", b'<?xml version="1.0"?>\n<html><body>x</body></html>', "html"),
        ("head-first.txt", b"<head><title>t</title></head>", "html"),
        ("snippet.md", b"Intro\n\n```html\n<html><body></body></html>\n```", "md"),
        ("latin1.txt", "Café crème brûlée".encode("latin-1"), "txt"),
        ("utf16.txt", codecs.BOM_UTF16_LE + "hello wörld".encode("utf-16-le"), "txt"),
        ("utf16be.csv", codecs.BOM_UTF16_BE + "a,b\n1,2".encode("utf-16-be"), "csv"),
        ("bom.html", codecs.BOM_UTF8 + b"<!doctype html><p>x</p>", "html"),
        ("not-a-pdf.pdf", b"hello, I am text", None),
        ("not-a-docx.docx", b"hello, I am text", None),
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", None),
        ("program", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00", None),
        ("broken.docx", b"PK\x03\x04 this is not really a zip", None),
        ("binary.txt", bytes(range(1, 32)) * 50, None),
        ("empty.txt", b"", None),
    ],
)
def test_detect_file_type_by_content(
    tmp_path: Path, name: str, content: bytes, expected: str | None
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert detect_file_type(path, name) == expected


def test_detect_pdf_and_docx_whatever_their_name(tmp_path: Path) -> None:
    pdf = docgen.make_pdf(tmp_path / "upload.bin", [SENTENCE])
    word = docgen.make_docx(tmp_path / "upload.zip", [SENTENCE])
    assert detect_file_type(pdf, "report.txt") == "pdf"
    assert detect_file_type(word, "report.pdf") == "docx"
    assert detect_file_type(word, "report") == "docx"


def test_detect_pdf_header_after_junk(tmp_path: Path) -> None:
    path = tmp_path / "junk-first.pdf"
    path.write_bytes(b"\x00" * 500 + docgen.make_pdf(tmp_path / "x.pdf", [SENTENCE]).read_bytes())
    assert detect_file_type(path, path.name) == "pdf"


def test_detect_other_zip_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "archive.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert detect_file_type(path, path.name) is None


def make_parts_zip(path: Path, parts: int) -> Path:
    """A zip with word/document.xml and ``parts - 1`` empty members."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("word/document.xml", "<w:document/>")
        for n in range(parts - 1):
            zf.writestr(f"word/media/{n}.txt", "")
    return path


_EOCD = struct.Struct("<4s4H2LH")


def rewrite_end_records(
    path: Path,
    *,
    entries: int | None = None,
    directory_size: int | None = None,
    zip64: bool = False,
) -> Path:
    """Make the zip's end of central directory declare ``entries`` and ``directory_size``;
    with ``zip64``, in ZIP64 end records (the classic record then says 0xFFFF)."""
    data = path.read_bytes()
    end = data.rindex(b"PK\x05\x06")
    fields = list(_EOCD.unpack_from(data, end))
    count = fields[4] if entries is None else entries
    size = fields[5] if directory_size is None else directory_size
    offset = fields[6]
    if zip64:
        record = struct.pack(
            "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset
        )
        locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
        classic = _EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
        data = data[:end] + record + locator + classic
    else:
        fields[3:6] = [count, count, size]
        data = data[:end] + _EOCD.pack(*fields) + data[end + _EOCD.size :]
    path.write_bytes(data)
    return path


def forbid_zipfile(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, fail if anything opens a zip with zipfile (it reads the whole central
    directory)."""

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("zipfile.ZipFile read the central directory")

    monkeypatch.setattr(zipfile, "ZipFile", refuse)


def test_detect_refuses_20000_parts_without_reading_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_parts_zip(tmp_path / "parts.docx", 20_000)
    with zipfile.ZipFile(path) as zf:
        assert len(zf.infolist()) == 20_000
    forbid_zipfile(monkeypatch)
    assert detect_file_type(path, path.name) is None


@pytest.mark.parametrize(
    "declared",
    [
        {"entries": 20_000},
        {"entries": 20_000, "zip64": True},
        {"entries": 0xFFFF},
        {"entries": 1},  # understates a directory of 2,000 entries
        {"directory_size": 17 * 1024 * 1024},
    ],
    ids=["20000-entries", "20000-entries-zip64", "65535-entries", "count-too-low", "huge-dir"],
)
def test_detect_refuses_zip_by_its_end_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, declared: dict[str, Any]
) -> None:
    path = rewrite_end_records(make_parts_zip(tmp_path / "a.docx", 2_000), **declared)
    forbid_zipfile(monkeypatch)
    assert detect_file_type(path, path.name) is None


def test_detect_reads_zip64_end_records(tmp_path: Path) -> None:
    word = rewrite_end_records(docgen.make_docx(tmp_path / "a.docx", [SENTENCE]), zip64=True)
    assert detect_file_type(word, word.name) == "docx"
    assert SENTENCE in full_text(extract(word))


def test_detect_accepts_the_most_parts_a_docx_may_have(tmp_path: Path) -> None:
    path = make_parts_zip(tmp_path / "parts.docx", 10_000)
    assert detect_file_type(path, path.name) == "docx"


def test_detect_docx_with_archive_comment(tmp_path: Path) -> None:
    path = docgen.make_docx(tmp_path / "a.docx", [SENTENCE])
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = b"x" * 60_000  # the end record is no longer the last 22 bytes
    assert detect_file_type(path, path.name) == "docx"


def test_supported_types() -> None:
    assert frozenset({"pdf", "docx", "html", "md", "txt", "csv"}) == SUPPORTED_TYPES


# --------------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------------


def test_pdf_keeps_page_numbers_and_skips_blank_pages(tmp_path: Path) -> None:
    path = docgen.make_pdf(tmp_path / "a.pdf", ["First page text.", "", f"Third page. {SENTENCE}"])
    sections = extract(path)
    assert [section.page for section in sections] == [1, 3]
    assert "First page text." in sections[0].text
    assert SENTENCE in sections[1].text


def test_pdf_max_pages_ignores_later_pages(tmp_path: Path) -> None:
    path = docgen.make_pdf(tmp_path / "a.pdf", [f"Page {n} body." for n in range(1, 6)])
    sections = extract(path, max_pages=2)
    assert [section.page for section in sections] == [1, 2]
    assert "Page 3" not in full_text(sections)


def test_pdf_max_chars_truncates(tmp_path: Path) -> None:
    path = docgen.make_pdf(tmp_path / "a.pdf", ["a" * 300, "b" * 300, "c" * 300])
    sections = extract(path, max_chars=450)
    assert sum(len(section.text) for section in sections) == 450
    assert [section.page for section in sections] == [1, 2]


def test_pdf_latin1_text_round_trips(tmp_path: Path) -> None:
    path = docgen.make_pdf(tmp_path / "a.pdf", ["Crème brûlée à l'hôtel (50 %) \\ fin."])
    assert "Crème brûlée à l'hôtel (50 %) \\ fin." in full_text(extract(path))


def test_pdf_with_user_password_is_rejected_with_reason(tmp_path: Path) -> None:
    path = docgen.make_encrypted_pdf(tmp_path / "locked.pdf", SENTENCE, "s3cret")
    message = error_of(path)
    assert message == "This PDF is password protected; remove the password and upload it again."


def test_pdf_password_argument_unlocks(tmp_path: Path) -> None:
    path = docgen.make_encrypted_pdf(tmp_path / "locked.pdf", SENTENCE, "s3cret")
    assert SENTENCE in full_text(extract(path, password="s3cret"))
    assert "wrong" in error_of(path, password="guess")


def test_pdf_encrypted_with_empty_user_password_opens(tmp_path: Path) -> None:
    path = docgen.make_encrypted_pdf(tmp_path / "restricted.pdf", SENTENCE, "")
    assert SENTENCE in full_text(extract(path))


def test_image_only_pdf_needs_ocr(tmp_path: Path) -> None:
    path = docgen.make_image_only_pdf(tmp_path / "scan.pdf", pages=2)
    message = error_of(path)
    assert "no extractable text" in message and "OCR" in message
    assert_human_sentence(message)


def test_corrupt_pdf_is_reported_as_damaged(tmp_path: Path) -> None:
    message = error_of(docgen.make_corrupt_pdf(tmp_path / "bad.pdf"))
    assert "damaged" in message
    assert_human_sentence(message)


def test_truncated_pdf_never_leaks_a_library_exception(tmp_path: Path) -> None:
    data = docgen.make_pdf(tmp_path / "a.pdf", [SENTENCE] * 3).read_bytes()
    for cut in (20, len(data) // 3, len(data) // 2, len(data) - 40):
        path = tmp_path / f"cut{cut}.pdf"
        path.write_bytes(data[:cut])
        try:
            sections = extract(path, "pdf")
        except ExtractionError as exc:
            assert_human_sentence(str(exc))
        else:
            assert full_text(sections).strip()


# --------------------------------------------------------------------------------------------
# DOCX
# --------------------------------------------------------------------------------------------


def test_docx_paragraphs_and_tables_in_document_order(tmp_path: Path) -> None:
    path = docgen.make_docx(
        tmp_path / "a.docx",
        ["Opening paragraph.", SENTENCE],
        [["Name", "Role"], ["Ada", "Engineer"]],
        trailing_paragraph="Closing paragraph.",
    )
    text = full_text(extract(path))
    order = [text.index(part) for part in ("Opening", SENTENCE, "Ada", "Closing")]
    assert order == sorted(order)
    assert "Ada | Engineer" in text
    assert extract(path)[0].page is None


def test_docx_nested_table_text_is_extracted(tmp_path: Path) -> None:
    path = docgen.make_docx(
        tmp_path / "a.docx",
        ["Intro."],
        [["outer-a", "outer-b"]],
        nested_rows=[["inner-x", "inner-y"], ["inner-z", "inner-w"]],
    )
    text = full_text(extract(path))
    for word in ("outer-a", "outer-b", "inner-x", "inner-y", "inner-z", "inner-w"):
        assert text.count(word) == 1, word


def test_docx_merged_cell_text_appears_once(tmp_path: Path) -> None:
    path = docgen.make_docx(tmp_path / "a.docx", ["Intro."], merged_text="Quarterly totals")
    text = full_text(extract(path))
    assert text.count("Quarterly totals") == 1
    assert "corner cell" in text


def test_docx_zip_bomb_is_refused_before_parsing(tmp_path: Path) -> None:
    path = docgen.make_zip_bomb_docx(tmp_path / "bomb.docx")
    assert path.stat().st_size < 5 * 1024 * 1024
    message = error_of(path)
    assert "zip bomb" in message and "MB" in message


def test_docx_zip_bomb_with_lying_sizes_is_refused(tmp_path: Path) -> None:
    path = docgen.make_zip_bomb_docx(tmp_path / "liar.docx", lie_about_size=True)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("word/document.xml").file_size == 4096  # the lie
    message = error_of(path)
    assert "zip bomb" in message


def test_docx_member_larger_than_declared_but_small_is_refused(tmp_path: Path) -> None:
    path = docgen.make_zip_bomb_docx(
        tmp_path / "small-liar.docx", inflated_bytes=16 * 1024 * 1024, lie_about_size=True
    )
    assert "do not match" in error_of(path)


def test_docx_with_broken_xml_is_damaged(tmp_path: Path) -> None:
    good = docgen.make_docx(tmp_path / "good.docx", [SENTENCE])
    bad = tmp_path / "bad.docx"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "word/document.xml":
                data = data[: len(data) // 2]
            target.writestr(item, data)
    message = error_of(bad)
    assert "damaged" in message
    assert_human_sentence(message)


def test_docx_that_is_not_a_zip_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "fake.docx"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    assert "damaged" in error_of(path, "docx")


def test_docx_with_too_many_parts_is_refused(tmp_path: Path) -> None:
    path = make_parts_zip(tmp_path / "parts.docx", 10_002)
    assert detect_file_type(path, path.name) is None  # refused at upload already
    assert "more than 10,000 parts" in error_of(path, "docx")


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("main_landmark", [True, False])
def test_html_keeps_visible_text_only(tmp_path: Path, main_landmark: bool) -> None:
    path = docgen.make_html(tmp_path / "a.html", SENTENCE, main_landmark=main_landmark)
    text = full_text(extract(path))
    assert SENTENCE in text  # inline <b> did not split the sentence
    for marker in docgen.HTML_NOISE_MARKERS:
        assert marker not in text
    assert "Test page" not in text  # <title> lives in <head>, which is not shown


def test_html_blocks_become_blocks_under_their_heading(tmp_path: Path) -> None:
    path = docgen.make_html(
        tmp_path / "a.html",
        SENTENCE,
        heading="Opening hours",
        list_items=["Monday closed", "Tuesday open"],
        table_cells=["Price", "12 EUR"],
    )
    sections = extract(path)
    under = [s for s in sections if s.headings == ("Opening hours",)]
    assert len(under) == 1
    blocks = under[0].text.split("\n\n")
    for expected in (SENTENCE, "Monday closed", "Tuesday open", "Price | 12 EUR"):
        assert expected in blocks
    assert "Opening hours" not in "\n".join(s.text for s in sections)


def test_html_declared_legacy_charset_is_respected(tmp_path: Path) -> None:
    sentence = "Der Bäcker öffnet um sieben Uhr für Grüße."
    path = docgen.make_html(tmp_path / "a.html", sentence, charset="iso-8859-1", encoding="cp1252")
    assert sentence in full_text(extract(path))


def test_html_script_charset_does_not_override_meta(tmp_path: Path) -> None:
    # The noise includes <script charset="gbk">; the page itself is UTF-8, as it declares.
    sentence = "宇航员在太空中喝酒会怎么样？后果很严重。"
    path = docgen.make_html(tmp_path / "a.html", sentence)
    assert sentence in full_text(extract(path))


def test_html_lying_charset_falls_back_to_detection(tmp_path: Path) -> None:
    sentence = "Привет, мир. Это тестовая страница о погоде в Москве и в Санкт-Петербурге."
    path = docgen.make_html(tmp_path / "a.html", sentence, charset="utf-8", encoding="cp1251")
    assert sentence in full_text(extract(path))


def test_html_without_text_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "blank.html"
    path.write_text("<html><head><script>var a = 1;</script></head><body> </body></html>")
    assert error_of(path) == "The document contains no text."


def test_html_nested_very_deep_is_linear(tmp_path: Path) -> None:
    path = tmp_path / "deep.html"
    depth = 30_000
    path.write_text(f"<html><body>{'<div>' * depth}{SENTENCE}{'</div>' * depth}</body></html>")
    assert full_text(extract(path)) == SENTENCE


# --------------------------------------------------------------------------------------------
# Markdown, text, CSV
# --------------------------------------------------------------------------------------------


def test_markdown_keeps_text_and_code_drops_badges(tmp_path: Path) -> None:
    code = '<section id="demo">\n  <p>Rendered &amp; escaped</p>\n</section>'
    path = docgen.make_md(tmp_path / "a.md", SENTENCE, heading="Install guide", code=code)
    text = full_text(extract(path))
    assert SENTENCE in text
    assert "Install guide" in text and "# Install guide" not in text
    assert code in text  # verbatim: fenced HTML is not markup
    assert "See the documentation for more." in text
    for noise in ("badge.svg", "img.shields.io", "<img", "SPDX", "docs.example.com"):
        assert noise not in text


def test_markdown_unclosed_fence_keeps_rest_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_text("Intro.\n\n```\n![kept](x.png) <img src=y>\n")
    assert "![kept](x.png) <img src=y>" in full_text(extract(path))


@pytest.mark.parametrize(
    "hostile",
    ["[a](" * 50_000, "# a" + " " * 200_000 + "b", "<!--" * 50_000, "[x\n" * 50_000, "[" * 200_000],
)
def test_markdown_cleanup_takes_linear_time(tmp_path: Path, hostile: str) -> None:
    path = docgen.make_txt(tmp_path / "hostile.md", f"{SENTENCE}\n{hostile}")
    assert SENTENCE in full_text(extract(path))


def test_txt_utf8(tmp_path: Path) -> None:
    path = docgen.make_txt(tmp_path / "a.txt", f"{SENTENCE}\nZweite Zeile: Grüße, 你好.")
    assert full_text(extract(path)) == f"{SENTENCE}\nZweite Zeile: Grüße, 你好."


def test_txt_utf16_with_bom(tmp_path: Path) -> None:
    text = f"{SENTENCE} Ünïcödé 日本語"
    path = docgen.make_utf16_txt(tmp_path / "a.txt", text)
    assert full_text(extract(path)) == text


def test_txt_latin1(tmp_path: Path) -> None:
    text = "Le café de la gare ouvre à sept heures, déjà complet à Noël."
    path = docgen.make_latin1_txt(tmp_path / "a.txt", text)
    assert full_text(extract(path)) == text


def test_txt_strips_nul_and_normalises_newlines(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"line one\r\nline\x00 two\rline three")
    assert detect_file_type(path, path.name) is None  # NUL bytes: binary to the detector
    assert full_text(extract(path, "txt")) == "line one\nline two\nline three"


def test_txt_max_chars_reads_only_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(("é" * 1000 + "\n").encode() * 2000)  # 4 MB
    sections = extract(path, max_chars=1500)
    assert len(sections[0].text) == 1500
    assert sections[0].text.startswith("é" * 1000)
    assert "\ufffd" not in sections[0].text  # the byte cut did not split a character


def test_whitespace_only_txt_has_no_text(tmp_path: Path) -> None:
    path = docgen.make_txt(tmp_path / "a.txt", " \n\t\n  ")
    assert error_of(path) == "The document contains no text."


def test_csv_rows_render_with_headers(tmp_path: Path) -> None:
    path = docgen.make_csv(
        tmp_path / "a.csv",
        ["name", "address", "note"],
        [["Ada", "1 Main St, Springfield", 'said "hi"'], ["Bob", "2 Elm St", ""]],
    )
    rows = full_text(extract(path)).split("\n\n")
    assert rows == [
        'name: Ada; address: 1 Main St, Springfield; note: said "hi"',
        "name: Bob; address: 2 Elm St",
    ]


def test_csv_semicolon_delimited(tmp_path: Path) -> None:
    path = docgen.make_csv(
        tmp_path / "a.csv",
        ["Stadt", "Preis"],
        [["Köln", "3,50"], ["Berlin", "4,10"]],
        delimiter=";",
    )
    assert full_text(extract(path)).split("\n\n") == [
        "Stadt: Köln; Preis: 3,50",
        "Stadt: Berlin; Preis: 4,10",
    ]


def test_csv_in_latin1(tmp_path: Path) -> None:
    path = docgen.make_csv(
        tmp_path / "a.csv",
        ["ville", "spécialité"],
        [["Lyon", "quenelle à la crème"]],
        encoding="latin-1",
    )
    assert "ville: Lyon; spécialité: quenelle à la crème" in full_text(extract(path))


def test_csv_that_is_prose_stays_text(tmp_path: Path) -> None:
    path = docgen.make_txt(tmp_path / "a.csv", f"{SENTENCE}\nAnother line without delimiters")
    assert full_text(extract(path)) == f"{SENTENCE}\nAnother line without delimiters"


def test_csv_with_unparseable_field_falls_back_to_text(tmp_path: Path) -> None:
    huge = "x" * (csv.field_size_limit() + 10)
    path = docgen.make_txt(tmp_path / "a.csv", f'a,b\n1,"{huge}"\n')
    assert huge in full_text(extract(path))


def test_csv_delimiter_sniffing_takes_linear_time(tmp_path: Path) -> None:
    # csv.Sniffer needs about 10 s for 64 KB of this.
    path = docgen.make_txt(tmp_path / "quotes.csv", "a,b\n" + ',"a' * 30_000)
    assert full_text(extract(path)).strip()


# --------------------------------------------------------------------------------------------
# decode_text
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (codecs.BOM_UTF8 + "Grüße".encode(), "Grüße"),
        (codecs.BOM_UTF16_LE + "Grüße".encode("utf-16-le"), "Grüße"),
        (codecs.BOM_UTF16_BE + "Grüße".encode("utf-16-be"), "Grüße"),
        (codecs.BOM_UTF32_LE + "Grüße".encode("utf-32-le"), "Grüße"),
        (codecs.BOM_UTF32_BE + "Grüße".encode("utf-32-be"), "Grüße"),
        ("naïve café, 東京".encode(), "naïve café, 東京"),
        ("Prix: 5 € – “très” bon".encode("cp1252"), "Prix: 5 € – “très” bon"),
        ("Ein schöner Tag für Müller".encode("latin-1"), "Ein schöner Tag für Müller"),
        (
            "Съешь же ещё этих мягких французских булок, да выпей чаю.".encode("cp1251"),
            "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        ),
        ("Zażółć gęślą jaźń, mąka i łódź.".encode("cp1250"), "Zażółć gęślą jaźń, mąka i łódź."),
        ("Γειά σου κόσμε, καλημέρα.".encode("cp1253"), "Γειά σου κόσμε, καλημέρα."),
        ("Ça va? À bientôt, où es-tu?".encode("latin-1"), "Ça va? À bientôt, où es-tu?"),
        # UTF-8 that was once decoded as Latin-1 and saved again (mojibake) is repaired.
        ("1986–1990 Watford".encode().decode("latin-1").encode(), "1986–1990 Watford"),
        (b"", ""),
    ],
)
def test_decode_text(data: bytes, expected: str) -> None:
    assert decode_text(data) == expected


def test_decode_text_never_raises_on_noise() -> None:
    noise = bytes((i * 37 + 11) % 256 for i in range(5000))
    assert isinstance(decode_text(noise), str)
    assert isinstance(decode_text(b"\xff\xfe\x00"), str)  # a BOM and half a character


# --------------------------------------------------------------------------------------------
# Errors common to all types
# --------------------------------------------------------------------------------------------


def test_unknown_type_is_refused(tmp_path: Path) -> None:
    path = docgen.make_txt(tmp_path / "a.txt", SENTENCE)
    message = error_of(path, "exe")
    assert "not supported" in message


def test_missing_file_is_an_extraction_error(tmp_path: Path) -> None:
    for file_type in sorted(SUPPORTED_TYPES):
        message = error_of(tmp_path / "gone", file_type)
        assert message == "We could not read the uploaded file; upload it again."


@pytest.mark.parametrize("file_type", sorted(SUPPORTED_TYPES))
def test_random_bytes_never_escape_as_other_exceptions(tmp_path: Path, file_type: str) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(os.urandom(20_000))
    try:
        sections = extract(path, file_type)
    except ExtractionError as exc:
        assert_human_sentence(str(exc))
    else:
        assert all(section.text.strip() for section in sections)


# --------------------------------------------------------------------------------------------
# Sandbox: extraction in worker processes
# --------------------------------------------------------------------------------------------

BOUNDS = {"timeout_s": 30.0, "max_memory_mb": 1024}


@contextmanager
def open_sandbox(**settings: Any) -> Iterator[Sandbox]:
    sandbox = Sandbox(**{**BOUNDS, **LIMITS, **settings})
    try:
        yield sandbox
    finally:
        sandbox.close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with open_sandbox() as shared:
        yield shared


@pytest.fixture
def scheduled(monkeypatch: pytest.MonkeyPatch) -> dict[str, Future[Any]]:
    """The future of every file the sandbox hands to pebble, by file name: a test can see when
    a worker has picked a file up (``future.running()``) and when it is done."""
    futures: dict[str, Future[Any]] = {}
    schedule = pebble.ProcessPool.schedule

    def recording_schedule(
        pool: pebble.ProcessPool, function: Any, args: Any = (), **options: Any
    ) -> Future[Any]:
        future = schedule(pool, function, args=args, **options)
        if args:
            futures[Path(args[0]).name] = future
        return future

    monkeypatch.setattr(pebble.ProcessPool, "schedule", recording_schedule)
    return futures


def make_slower_pdf(path: Path, pages: int = 6) -> Path:
    """``docgen.make_slow_pdf``'s page, ``pages`` times: seconds of parsing per page (pypdf
    caps the tokens of one content stream, so a single page cannot take much longer)."""
    content = b"BT /F1 11 Tf 50 780 Td " + b"(x) Tj 1 0 Td " * 200_000 + b"ET"
    path.write_bytes(docgen._pages_pdf([content] * pages, b"<< /Font << /F1 3 0 R >> >>"))
    return path


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Poll ``condition`` until it holds (the order comes from it, not from the interval)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def pool_workers() -> set[int]:
    return {
        process.pid
        for process in multiprocessing.active_children()
        if process.name == "pebble_pool_worker" and process.pid is not None
    }


def test_sandbox_starts_nothing_until_used(tmp_path: Path) -> None:
    before = pool_workers()
    with open_sandbox() as unused:
        with pytest.raises(ExtractionError, match="not supported"):
            unused.extract(docgen.make_txt(tmp_path / "a.txt", SENTENCE), "exe")
        assert pool_workers() == before


def test_worker_start_up_does_not_count_against_the_timeout(tmp_path: Path) -> None:
    # A new worker (an interpreter importing pypdf, python-docx, lxml...) needs longer than
    # this deadline to start: the clock runs only once a worker has picked the file up.
    with open_sandbox(timeout_s=0.25) as fresh:
        quick = docgen.make_txt(tmp_path / "quick.txt", SENTENCE)
        assert full_text(fresh.extract(quick, "txt")) == SENTENCE


def test_sandbox_matches_in_process_extraction(tmp_path: Path, sandbox: Sandbox) -> None:
    path = docgen.make_pdf(tmp_path / "a.pdf", ["One.", "", SENTENCE])
    assert sandbox.extract(path, "pdf") == extract(path)


def test_sandbox_passes_extraction_errors_through(tmp_path: Path, sandbox: Sandbox) -> None:
    path = docgen.make_encrypted_pdf(tmp_path / "locked.pdf", SENTENCE, "pw")
    with pytest.raises(ExtractionError, match="password protected"):
        sandbox.extract(path, "pdf")
    assert SENTENCE in full_text(sandbox.extract(path, "pdf", password="pw"))


def test_sandbox_times_out_and_recovers(tmp_path: Path) -> None:
    slow = docgen.make_slow_pdf(tmp_path / "slow.pdf")
    with open_sandbox(timeout_s=0.5) as hasty:
        with pytest.raises(ExtractionError) as caught:
            hasty.extract(slow, "pdf")
        assert str(caught.value).startswith("Parsing this file took longer than 0.5 seconds;")
        assert_human_sentence(str(caught.value))
        # The killed worker is replaced transparently.
        quick = docgen.make_txt(tmp_path / "quick.txt", SENTENCE)
        assert full_text(hasty.extract(quick, "txt")) == SENTENCE


def test_sandbox_memory_limit(tmp_path: Path) -> None:
    # 20 MB of markup (what is read for max_chars=1M), 2.5 million elements: gigabytes as a tree.
    path = tmp_path / "huge.html"
    path.write_text("<html><body>" + "<p>x</p>" * 2_500_000 + "</body></html>")
    with open_sandbox(max_memory_mb=160) as capped:
        with pytest.raises(ExtractionError) as caught:
            capped.extract(path, "html")
        assert "memory" in str(caught.value) and "160 MB" in str(caught.value)
        assert_human_sentence(str(caught.value))
        # The worker that hit the cap is replaced; the next file parses normally.
        quick = docgen.make_txt(tmp_path / "quick.txt", SENTENCE)
        assert full_text(capped.extract(quick, "txt")) == SENTENCE


def test_sandbox_is_safe_from_many_threads(tmp_path: Path, sandbox: Sandbox) -> None:
    paths = [docgen.make_txt(tmp_path / f"{n}.txt", f"Document number {n}.") for n in range(6)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(n: int) -> None:
        try:
            start.wait(timeout=60)
            results[n] = full_text(sandbox.extract(paths[n], "txt"))
        except BaseException as exc:  # collected and re-checked in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors
    assert results == {n: f"Document number {n}." for n in range(6)}


def test_timeout_kills_only_its_own_worker(
    tmp_path: Path, scheduled: dict[str, Future[Any]]
) -> None:
    slow = make_slower_pdf(tmp_path / "slow.pdf")  # about 35 s of parsing
    quick = docgen.make_pdf(tmp_path / "quick.pdf", [SENTENCE])
    outcome: dict[str, str] = {}
    with open_sandbox(timeout_s=8.0, max_chars=5_000_000) as box:
        box.start()

        def run_slow() -> None:
            try:
                box.extract(slow, "pdf")
            except ExtractionError as exc:
                outcome["slow"] = str(exc)

        thread = threading.Thread(target=run_slow)
        thread.start()
        wait_until(
            lambda: "slow.pdf" in scheduled and scheduled["slow.pdf"].running(),
            "a worker to start parsing slow.pdf",
        )
        outcome["quick"] = full_text(box.extract(quick, "pdf"))
        # The quick file was parsed, in the other worker, while the slow one still ran.
        assert not scheduled["slow.pdf"].done()
        workers_during = pool_workers()
        thread.join(timeout=120)
        assert not thread.is_alive()
        # The deadline killed one worker: the slow file's. The other one lives on.
        assert len(workers_during - pool_workers()) == 1
    assert outcome["quick"] == SENTENCE
    assert outcome["slow"].startswith("Parsing this file took longer than 8 seconds;")


def test_close_kills_a_busy_worker_and_the_call_is_retried_later(
    tmp_path: Path, scheduled: dict[str, Future[Any]]
) -> None:
    slow = make_slower_pdf(tmp_path / "slow.pdf")
    outcome: list[BaseException] = []
    with open_sandbox(max_chars=5_000_000) as box:

        def run_slow() -> None:
            try:
                box.extract(slow, "pdf")
            except BaseException as exc:  # checked in the main thread
                outcome.append(exc)

        thread = threading.Thread(target=run_slow)
        thread.start()
        wait_until(
            lambda: "slow.pdf" in scheduled and scheduled["slow.pdf"].running(),
            "a worker to start parsing slow.pdf",
        )
        box.close()
        thread.join(timeout=60)
        assert not thread.is_alive()
        [error] = outcome
        assert isinstance(error, ExtractorUnavailable)
        assert "will be retried" in str(error)
        # Closed is not broken: the next call starts new workers.
        quick = docgen.make_txt(tmp_path / "quick.txt", SENTENCE)
        assert full_text(box.extract(quick, "txt")) == SENTENCE


# --------------------------------------------------------------------------------------------
# The shared corpus of real documents
# --------------------------------------------------------------------------------------------

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"

# What each known file must lead to: text containing a phrase, or an error mentioning a word.
CORPUS_TEXT = {
    "arabic_habibi.pdf": "habibi",
    "chinese_gmw_news.html": "宇航员在太空中喝酒会怎么样",
    "chinese_ocrmypdf-README_ZH.md": "OCRmyPDF 会为扫描版 PDF 文件添加 OCR 文本层",
    "codeblock.md": "<h1>Hello, World!</h1>",
    "country-codes_multilingual.csv": "official_name_en: Afghanistan",
    "docx-tables-nested-merged.docx": "Header Col 1 | Header Col 2",
    "form-tables-footnotes_test07.docx": "Research Governance Checklist",
    "french_olap-paper.pdf": "Résumés et interrogations de logs de requêtes OLAP",
    "german_geotopo-117p.pdf": "Geometrie und Topologie",
    "german_heise_news.html": "1Password für Mac generiert Einmal-Passwörter",
    "mojibake_norwich-city.txt": "1986–1990 Watford",
    "scan_linn_reference.txt": "LinnSequencer",
    "scan_with-bad-ocr-layer.pdf": "POAH",
    "udhr-article1-all-languages.txt": "人人生而自由",
    "wikipedia_mozilla_en.html": "Mozilla",
}
CORPUS_ERRORS = {
    "enc_libreoffice-writer-password.pdf": "password protected",
    "enc_password.pdf": "password protected",
    "malformed_invalid-header-eof-only.pdf": "damaged",
    "scan_c02-22_huckfinn.pdf": "OCR",
    "scan_epson_ocr-article.pdf": "OCR",
    "scan_linn.pdf": "OCR",
    "scan_masks_de-wikipedia-linux.pdf": "OCR",
    "vector-text-no-fonts.pdf": "OCR",
}
CORPUS_PASSWORDS = {
    "enc_libreoffice-writer-password.pdf": ("openpassword", "Lorem ipsum dolor sit amet"),
    "enc_password.pdf": ("password", "File with password"),
}
# Every file present, and every file named above even when it is missing (so that it says so).
CORPUS_PRESENT = {p.name for p in CORPUS.iterdir() if p.is_file()} if CORPUS.is_dir() else set()
CORPUS_NAMES = sorted(CORPUS_PRESENT | set(CORPUS_TEXT) | set(CORPUS_ERRORS))


def corpus_file(name: str) -> Path:
    """The corpus file; when it is missing, a skip that says so, or a failure under
    REQUIRE_CORPUS=1 (CI, where the corpus must be there)."""
    path = CORPUS / name
    if not path.is_file():
        reason = f"{path} is missing (the shared corpus of real documents)"
        if os.environ.get("REQUIRE_CORPUS") == "1":
            pytest.fail(f"{reason}, and REQUIRE_CORPUS=1 requires it")
        pytest.skip(f"{reason}; REQUIRE_CORPUS=1 makes this a failure")
    return path


@pytest.fixture(scope="module")
def corpus_sandbox() -> Iterator[Sandbox]:
    with open_sandbox(timeout_s=60.0, max_pages=2000) as box:
        yield box


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_file_extracts_or_fails_with_a_reason(name: str, corpus_sandbox: Sandbox) -> None:
    path = corpus_file(name)
    file_type = detect_file_type(path, path.name)
    assert file_type in SUPPORTED_TYPES, f"{path.name} detected as {file_type}"
    try:
        sections = corpus_sandbox.extract(path, file_type)
    except ExtractionError as exc:
        message = str(exc)
        assert_human_sentence(message)
        assert path.name not in CORPUS_TEXT, f"{path.name} should extract, got: {message}"
        if path.name in CORPUS_ERRORS:
            assert CORPUS_ERRORS[path.name] in message
        return
    text = full_text(sections)
    assert text.strip()
    assert "\x00" not in text
    assert path.name not in CORPUS_ERRORS, f"{path.name} should fail"
    if path.name in CORPUS_TEXT:
        assert CORPUS_TEXT[path.name] in text
    if file_type == "pdf":
        pages = [section.page or 0 for section in sections]
        assert pages == sorted(set(pages)) and min(pages) >= 1


@pytest.mark.parametrize("name", sorted(CORPUS_PASSWORDS))
def test_corpus_encrypted_pdf_opens_with_its_password(name: str) -> None:
    password, phrase = CORPUS_PASSWORDS[name]
    assert phrase in full_text(extract(corpus_file(name), password=password))


@pytest.mark.parametrize("name", ["wikipedia_mozilla_en.html", "chinese_gmw_news.html"])
def test_corpus_html_has_no_script_or_style(name: str) -> None:
    text = full_text(extract(corpus_file(name)))
    assert not re.search(r"function\s*\(|\{\s*[a-z-]+\s*:\s*[^}]+;\s*\}", text)


def _paths(sections: list[Section]) -> list[tuple[tuple[str, ...], str]]:
    return [(section.headings, section.text) for section in sections]


def test_markdown_sections_follow_the_heading_path(tmp_path: Path) -> None:
    path = tmp_path / "faq.md"
    path.write_text(
        "Intro before any heading.\n\n"
        "# Returns #\n\nGeneral rules.\n\n"
        "## Refunds\n\nMoney back within 14 days.\n- by card\n- by [bank](https://x.example)\n\n"
        "Shipping\n--------\n\nUse the label.\n\n"
        "```\n# not a heading\n```\n\n"
        "# Contact\n\n#hashtag is text\n",
        encoding="utf-8",
    )
    assert _paths(extract(path)) == [
        ((), "Intro before any heading."),
        (("Returns",), "General rules."),
        (("Returns", "Refunds"), "Money back within 14 days.\n\n- by card\n\n- by bank"),
        (("Returns", "Shipping"), "Use the label.\n\n```\n# not a heading\n```"),
        (("Contact",), "#hashtag is text"),
    ]


def test_a_document_of_headings_alone_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "outline.md"
    path.write_text("# Plan\n\n## Step one\n", encoding="utf-8")
    assert _paths(extract(path)) == [((), "Plan\n\nStep one")]


def test_html_sections_follow_nested_headings(tmp_path: Path) -> None:
    path = tmp_path / "a.html"
    path.write_text(
        "<html><body><main><h1>Manual</h1><p>Welcome.</p>"
        "<section><h2>Cleaning <small>(weekly)</small></h2><p>Rinse the jug.</p>"
        "<h3>Descaling</h3><p>Use vinegar.</p></section>"
        "<h2>Parts</h2><table><tr><th>Part</th><th>Code</th></tr>"
        "<tr><td>Lid</td><td>QX-1</td></tr></table></main></body></html>",
        encoding="utf-8",
    )
    assert _paths(extract(path)) == [
        (("Manual",), "Welcome."),
        (("Manual", "Cleaning (weekly)"), "Rinse the jug."),
        (("Manual", "Cleaning (weekly)", "Descaling"), "Use vinegar."),
        (("Manual", "Parts"), "Part | Code\n\nLid | QX-1"),
    ]


def test_docx_sections_follow_heading_styles(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Warranty", level=0)  # the Title style
    document.add_paragraph("Two years on every part.")
    document.add_heading("Exclusions", level=1)
    document.add_paragraph("Glass is not covered.")
    document.add_heading("Wear", level=2)
    document.add_paragraph("Seals wear out.")
    document.add_heading("Claims", level=1)
    table = document.add_table(rows=1, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Form", "W-7"
    path = tmp_path / "warranty.docx"
    document.save(str(path))
    assert _paths(extract(path)) == [
        (("Warranty",), "Two years on every part."),
        (("Warranty", "Exclusions"), "Glass is not covered."),
        (("Warranty", "Exclusions", "Wear"), "Seals wear out."),
        (("Warranty", "Claims"), "Form | W-7"),
    ]

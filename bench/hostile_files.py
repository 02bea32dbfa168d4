"""How long extraction takes on hostile files: the figures tests/rag/test_loaders.py used to
assert as wall-clock bounds and now only checks the outcome of.

Each file is extracted in this process (``extract_text``, no sandbox) and its seconds printed;
they should stay well under a second or two and grow linearly with the input, not explode.

    .venv/bin/python bench/hostile_files.py
"""

from __future__ import annotations

import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.rag.extract import ExtractionError, detect_file_type, extract_text  # noqa: E402
from tests import docgen  # noqa: E402

SENTENCE = "The lighthouse keeper counted forty-two ships before dawn."


def _text(name: str, content: str) -> Callable[[Path], Path]:
    return lambda folder: docgen.make_txt(folder / name, content)


def _deep_html(folder: Path) -> Path:
    path = folder / "deep.html"
    path.write_text(f"<html><body>{'<div>' * 30_000}{SENTENCE}{'</div>' * 30_000}</body></html>")
    return path


def _parts_zip(folder: Path) -> Path:
    path = folder / "parts.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("word/document.xml", "<w:document/>")
        for n in range(20_000):
            zf.writestr(f"word/media/{n}.txt", "")
    return path


CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("DOCX zip bomb", lambda folder: docgen.make_zip_bomb_docx(folder / "bomb.docx"), "docx"),
    (
        "DOCX zip bomb with lying sizes",
        lambda folder: docgen.make_zip_bomb_docx(folder / "liar.docx", lie_about_size=True),
        "docx",
    ),
    ("HTML nested 30,000 deep", _deep_html, "html"),
    ("Markdown: 50,000 unclosed links", _text("a.md", f"{SENTENCE}\n" + "[a](" * 50_000), "md"),
    ("Markdown: 200,000 spaces", _text("b.md", f"{SENTENCE}\n# a" + " " * 200_000 + "b"), "md"),
    ("Markdown: 50,000 open comments", _text("c.md", f"{SENTENCE}\n" + "<!--" * 50_000), "md"),
    ("Markdown: 200,000 brackets", _text("d.md", f"{SENTENCE}\n" + "[" * 200_000), "md"),
    ("CSV: 30,000 stray quotes", _text("q.csv", "a,b\n" + ',"a' * 30_000), "csv"),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for label, make, file_type in CASES:
            path = make(folder)
            started = time.perf_counter()
            try:
                extract_text(path, file_type, max_pages=50, max_chars=1_000_000)
                outcome = "text"
            except ExtractionError as exc:
                outcome = str(exc).split(":")[0]
            print(f"{label:<34} {time.perf_counter() - started:6.3f} s  ({outcome})")
        path = _parts_zip(folder)
        started = time.perf_counter()
        detected = detect_file_type(path, path.name)
        print(
            f"{'detect: zip of 20,000 parts':<34} {time.perf_counter() - started:6.3f} s  "
            f"(detected as {detected})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Text from bytes in an unknown encoding, and capped reads of text files."""

from __future__ import annotations

import codecs
import logging
import re
from pathlib import Path

import charset_normalizer

logger = logging.getLogger(__name__)

# Control characters other than tab, newlines and form feed, and the replacement character.
BINARY_CHAR = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")

# UTF-32 first: its little-endian BOM begins with the UTF-16 one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Mojibake made by decoding UTF-8 as Latin-1 contains C1 control characters, which never occur
# in real text, so runs containing them can be repaired without second-guessing real accents.
# One UTF-8 sequence (lead byte, exact number of continuation bytes) read as Latin-1, with at
# least one C1 character in it; exact lengths keep the regex free of backtracking.
_LATIN1_MOJIBAKE = re.compile(
    "[\xc2-\xdf][\x80-\x9f]"
    "|[\xe0-\xef](?:[\x80-\x9f][\x80-\xbf]|[\xa0-\xbf][\x80-\x9f])"
    "|[\xf0-\xf4](?=[\x80-\xbf]{0,2}[\x80-\x9f])[\x80-\xbf]{3}"
)
_WORD = re.compile(r"[^\W\d_]+")
_SYMBOL_IN_WORD = re.compile(r"[^\W\d_][^\w\s\x00-\x7f][^\W\d_]")
_WESTERN_MAX_FOREIGN_WORDS = 0.2
_C1_CONTROL = re.compile("[\x80-\x9f]")
_DETECTION_SAMPLE_BYTES = 64 * 1024


def decode_text(data: bytes) -> str:
    """Best-effort text from bytes in an unknown encoding; never raises."""
    return decode(data, final=True)


def decode(data: bytes, *, final: bool) -> str:
    """``final=False`` means ``data`` was cut short: a split last character is dropped."""
    encoding = bom_encoding(data)
    if encoding is not None:
        return incremental_decode(data, encoding, errors="replace", final=final)
    try:
        text = incremental_decode(data, "utf-8", errors="strict", final=final)
    except UnicodeDecodeError:
        return _decode_legacy(data)
    return _repair_latin1_mojibake(text)


def bom_encoding(data: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding
    return None


def incremental_decode(data: bytes, encoding: str, *, errors: str, final: bool) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    text = decoder.decode(data, final=final)
    return text.removeprefix("\ufeff")


def _decode_legacy(data: bytes) -> str:
    """Bytes that are not UTF-8: Western European first, then statistical detection.

    The encoding is judged on a sample; per-character checks over a whole 20 MB file would
    take seconds.
    """
    sample = _sample(data)
    if _plausible_western(_decode_cp1252(sample)):
        return _decode_cp1252(data)
    try:
        best = charset_normalizer.from_bytes(sample).best()
    except Exception:  # a detector bug must not lose the document: fall back below
        logger.warning("charset detection failed", exc_info=True)
        best = None
    if best is not None and best.encoding:
        try:
            return data.decode(best.encoding, errors="replace")
        except LookupError:
            pass
    return _decode_cp1252(data)


def _sample(data: bytes) -> bytes:
    if len(data) <= _DETECTION_SAMPLE_BYTES:
        return data
    sample = data[:_DETECTION_SAMPLE_BYTES]
    # Cut after a newline: it is never part of a multi-byte character in legacy CJK encodings,
    # so the detector does not see a broken last character.
    cut = sample.rfind(b"\n")
    return sample[: cut + 1] if cut > len(sample) // 2 else sample


def _decode_cp1252(data: bytes) -> str:
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        # cp1252 leaves five bytes undefined; Latin-1 maps every byte, so it cannot fail.
        return data.decode("latin-1")


def _plausible_western(text: str) -> bool:
    """Whether cp1252 is the likely encoding of a non-UTF-8 file.

    Statistical detectors misread short Latin-1 text as Baltic or Central European, so cp1252
    is tried first, and accepted only when it looks like a Western language: accented letters
    sit inside otherwise ASCII words ("café", "Müller"). Cyrillic or Greek bytes read as cp1252
    give words made only of accented letters ("Ïðèâåò"), and Central European letters that
    cp1252 lacks turn into symbols inside words (Polish "mąka" reads "m¹ka").
    """
    if BINARY_CHAR.search(text) or _SYMBOL_IN_WORD.search(text):
        return False
    accented_words = foreign_words = 0
    for word in _WORD.findall(text):
        if word.isascii():
            continue
        accented_words += 1
        if len(word) > 1 and not any(char.isascii() for char in word):
            foreign_words += 1
    return foreign_words <= _WESTERN_MAX_FOREIGN_WORDS * accented_words


def _repair_latin1_mojibake(text: str) -> str:
    if not _C1_CONTROL.search(text):
        return text
    try:  # the usual case: the whole file went through one wrong round trip
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass

    def repair(match: re.Match[str]) -> str:
        run = match.group()
        try:
            return run.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return run

    return _LATIN1_MOJIBAKE.sub(repair, text)


def read_prefix(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the file and whether the file was longer."""
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    return data[:max_bytes], len(data) > max_bytes


def read_text(path: Path, max_chars: int) -> str:
    # 4 bytes per character covers UTF-8 and UTF-32, so a capped read never loses characters
    # that could still fit under max_chars.
    data, truncated = read_prefix(path, max_chars * 4 + 4)
    return decode(data, final=not truncated)[:max_chars]

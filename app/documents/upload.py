"""Streams a multipart upload straight to disk, counting bytes as they arrive.

Starlette's form parser would spool the whole body before we could refuse it; this parser
writes the `file` field to its final folder under a generated name, hashes it on the way, and
stops at MAX_UPLOAD_MB whatever Content-Length claimed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import PayloadTooLarge, ValidationFailed

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

_FLUSH_BYTES = 1024 * 1024
_MAX_OTHER_FIELD_BYTES = 64 * 1024
_MULTIPART_OVERHEAD = 64 * 1024


class MultipartError(ValidationFailed):
    code = "invalid_upload"
    default_detail = "Send the file as multipart/form-data in a field named `file`."


class EmptyFile(ValidationFailed):
    code = "empty_file"
    default_detail = "The uploaded file is empty."


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    size: int
    sha256: str


@dataclass
class _State:
    folder: Path
    limit: int
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    in_file: bool = False
    other_bytes: int = 0
    handle: IO[bytes] | None = None
    path: Path | None = None
    filename: str = ""
    size: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    pending: list[bytes] = field(default_factory=list)
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    done: bool = False
    files_seen: int = 0


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise MultipartError()
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise MultipartError()
    return boundary


def _filename(disposition: str) -> tuple[str | None, str | None]:
    message = Message()
    message["content-disposition"] = disposition
    name = message.get_param("name", header="content-disposition")
    return (str(name) if isinstance(name, str) else None), message.get_filename()


def _clean_filename(raw: str) -> str:
    # Only for display: the stored file's name is generated, never derived from this.
    name = raw.replace("\\", "/").split("/")[-1].replace("\x00", "").strip()
    name = "".join(ch for ch in name if ch.isprintable())
    return (name or "upload")[:255]


async def receive_file(
    chunks: AsyncIterator[bytes], content_type: str | None, folder: Path, limit: int
) -> ReceivedFile:
    """Consume the request body; returns the stored file or raises (leaving nothing behind)."""
    boundary = boundary_of(content_type)
    state = _State(folder=folder, limit=limit)
    parser = MultipartParser(boundary, cast("MultipartCallbacks", _callbacks(state)))
    try:
        async for chunk in chunks:
            parser.write(chunk)
            if state.pending:
                await anyio.to_thread.run_sync(_flush, state, state.pending)
                state.pending = []
        parser.finalize()
        if state.buffer:
            await anyio.to_thread.run_sync(_flush, state, [bytes(state.buffer)])
            state.buffer.clear()
        if state.path is None or state.files_seen == 0:
            raise MultipartError()
        if not state.done:
            raise MultipartError("The upload ended before the file was complete.")
        if state.size == 0:
            raise EmptyFile()
        await anyio.to_thread.run_sync(_close, state)
        return ReceivedFile(state.path, state.filename, state.size, state.digest.hexdigest())
    except BaseException as exc:
        await anyio.to_thread.run_sync(_discard, state)
        if isinstance(exc, ValueError) and not isinstance(exc, ValidationFailed):
            raise MultipartError(f"The multipart body is malformed: {exc}") from exc
        raise


def _callbacks(state: _State) -> dict[str, Callable[..., None]]:
    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        key = state.header_field.decode("latin-1").strip().lower()
        state.headers[key] = state.header_value.decode("utf-8", "replace")
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished() -> None:
        name, filename = _filename(state.headers.get("content-disposition", ""))
        state.in_file = name == "file" and filename is not None and state.files_seen == 0
        if state.in_file:
            state.files_seen += 1
            state.filename = _clean_filename(filename or "")
            state.folder.mkdir(parents=True, exist_ok=True)
            state.path = state.folder / f"{secrets.token_hex(16)}.upload"
            state.handle = open(state.path, "xb")  # noqa: SIM115 - closed in _close/_discard

    def on_part_data(data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if not state.in_file:
            state.other_bytes += len(piece)
            if state.other_bytes > _MAX_OTHER_FIELD_BYTES:
                raise MultipartError("Only the `file` field is expected in this upload.")
            return
        state.size += len(piece)
        if state.size > state.limit:
            raise PayloadTooLarge(
                f"The file is larger than the {state.limit // (1024 * 1024)} MB upload limit."
            )
        state.digest.update(piece)
        state.buffer += piece
        if len(state.buffer) >= _FLUSH_BYTES:
            state.pending.append(bytes(state.buffer))
            state.buffer.clear()

    def on_part_end() -> None:
        if state.in_file:
            state.done = True
            state.in_file = False
            if state.buffer:
                state.pending.append(bytes(state.buffer))
                state.buffer.clear()
        state.headers = {}

    return {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }


def _flush(state: _State, pieces: list[bytes]) -> None:
    assert state.handle is not None
    for piece in pieces:
        state.handle.write(piece)


def _close(state: _State) -> None:
    if state.handle is not None:
        state.handle.close()
        state.handle = None


def _discard(state: _State) -> None:
    _close(state)
    if state.path is not None:
        try:
            os.unlink(state.path)
        except FileNotFoundError:
            pass


def declared_too_large(content_length: str | None, limit: int) -> bool:
    """Refuse early when the client itself says the body is too big (we still count)."""
    try:
        return content_length is not None and int(content_length) > limit + _MULTIPART_OVERHEAD
    except ValueError:
        return False

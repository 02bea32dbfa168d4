"""Streams a multipart upload straight to disk, counting bytes as they arrive.

Starlette's form parser would spool the whole body before we could refuse it; this parser
writes the `file` field to its final folder under a generated name, hashes it on the way, and
stops at MAX_UPLOAD_MB whatever Content-Length claimed, at MAX_MULTIPART_HEADER_BYTES of
headers in a part, and at MAX_UPLOAD_SECONDS. The whole body (preamble, other fields,
epilogue) is capped by the body-limit middleware at `upload_body_limit`. At most
MAX_CONCURRENT_UPLOADS_PER_CUSTOMER uploads of a customer stream at once (`UploadSlots`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

import anyio
from limits.storage import Storage
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.config import Settings
from app.core.errors import (
    AppError,
    InsufficientStorage,
    PayloadTooLarge,
    RateLimited,
    RequestTooLarge,
    ValidationFailed,
)
from app.core.ratelimit import storage_errors

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger("app.documents")

_FLUSH_BYTES = 1024 * 1024
_MAX_OTHER_FIELD_BYTES = 64 * 1024
# What a multipart body may hold beside the file: boundaries, part headers, other fields
# (at most _MAX_OTHER_FIELD_BYTES), preamble and epilogue.
_MULTIPART_OVERHEAD = 256 * 1024
# A slot of a process that died mid-upload is given back this long after the upload's limit.
_SLOT_GRACE_SECONDS = 60
_CLOSE = {"Connection": "close"}  # refused mid-body: the rest is not read


def upload_body_limit(settings: Settings) -> int:
    """The cap on an upload's whole request body: the file's limit plus a small overhead."""
    return settings.max_upload_bytes + _MULTIPART_OVERHEAD


class MultipartError(ValidationFailed):
    code = "invalid_upload"
    default_detail = "Send the file as multipart/form-data in a field named `file`."


class EmptyFile(ValidationFailed):
    code = "empty_file"
    default_detail = "The uploaded file is empty."


class UploadTimeout(AppError):
    status_code = 408
    code = "upload_timeout"
    default_detail = "The upload did not arrive in time; nothing was saved."

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers=_CLOSE)


class TooManyUploads(RateLimited):
    code = "too_many_uploads"
    default_detail = "Too many uploads of this customer are in progress; retry when one ends."


@dataclass(frozen=True)
class UploadLimits:
    file_bytes: int
    part_header_bytes: int
    seconds: float

    @classmethod
    def of(cls, settings: Settings) -> UploadLimits:
        return cls(
            settings.max_upload_bytes,
            settings.MAX_MULTIPART_HEADER_BYTES,
            settings.MAX_UPLOAD_SECONDS,
        )


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
    header_limit: int
    header_bytes: int = 0
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
    chunks: AsyncIterator[bytes], content_type: str | None, folder: Path, limits: UploadLimits
) -> ReceivedFile:
    """Consume the request body; returns the stored file or raises (leaving nothing behind).

    Raises UploadTimeout when the body has not arrived within `limits.seconds`,
    InsufficientStorage when the file cannot be written."""
    boundary = boundary_of(content_type)
    state = _State(folder=folder, limit=limits.file_bytes, header_limit=limits.part_header_bytes)
    parser = MultipartParser(
        boundary,
        cast("MultipartCallbacks", _callbacks(state)),
        # The parser checks each header line as it arrives; the callbacks count the part.
        max_header_size=limits.part_header_bytes,
    )
    try:
        try:
            with anyio.fail_after(limits.seconds):
                async for chunk in chunks:
                    parser.write(chunk)
                    if state.pending:
                        await anyio.to_thread.run_sync(_flush, state, state.pending)
                        state.pending = []
        except TimeoutError as exc:
            raise UploadTimeout(
                f"The upload did not arrive within {limits.seconds:g} seconds; nothing was saved."
            ) from exc
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
        with anyio.CancelScope(shield=True):  # also when the request is being cancelled
            await anyio.to_thread.run_sync(_discard, state)
        if isinstance(exc, MultipartParseError) and "header size" in str(exc):
            raise _headers_too_large(state.header_limit) from exc
        if isinstance(exc, ValueError) and not isinstance(exc, ValidationFailed):
            raise MultipartError(f"The multipart body is malformed: {exc}") from exc
        raise


def _headers_too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"A part of the multipart body has over {limit} bytes of headers.")


def _callbacks(state: _State) -> dict[str, Callable[..., None]]:
    def count_header(size: int) -> None:
        state.header_bytes += size
        if state.header_bytes > state.header_limit:
            raise _headers_too_large(state.header_limit)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        count_header(end - start)
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        count_header(end - start)
        state.header_value += data[start:end]

    def on_header_end() -> None:
        key = state.header_field.decode("latin-1").strip().lower()
        state.headers[key] = state.header_value.decode("utf-8", "replace")
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished() -> None:
        state.header_bytes = 0
        name, filename = _filename(state.headers.get("content-disposition", ""))
        state.in_file = name == "file" and filename is not None and state.files_seen == 0
        if state.in_file:
            state.files_seen += 1
            state.filename = _clean_filename(filename or "")
            _create(state)

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
                f"The file is larger than the {state.limit // (1024 * 1024)} MB upload limit.",
                headers=_CLOSE,
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


def _storage_failed(state: _State, exc: OSError) -> InsufficientStorage:
    # The operator needs the reason (disk full, permissions); the tenant only that it failed.
    log.error("cannot store an upload in %s: %s", state.folder, exc)
    return InsufficientStorage()


def _create(state: _State) -> None:
    try:
        state.folder.mkdir(parents=True, exist_ok=True)
        path = state.folder / f"{secrets.token_hex(16)}.upload"
        state.handle = open(path, "xb")  # noqa: SIM115 - closed in _close/_discard
        state.path = path
    except OSError as exc:
        raise _storage_failed(state, exc) from exc


def _flush(state: _State, pieces: list[bytes]) -> None:
    assert state.handle is not None
    try:
        for piece in pieces:
            state.handle.write(piece)
    except OSError as exc:
        raise _storage_failed(state, exc) from exc


def _close(state: _State) -> None:
    if state.handle is not None:
        handle, state.handle = state.handle, None
        try:
            handle.close()  # may report a failed write (disk full) only now
        except OSError as exc:
            raise _storage_failed(state, exc) from exc


def _discard(state: _State) -> None:
    try:
        _close(state)
    except InsufficientStorage:
        pass  # being discarded anyway
    if state.path is not None:
        try:
            os.unlink(state.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove the refused upload %s: %s", state.path, exc)


class UploadSlots:
    """At most `limit` uploads of one customer streaming at once, counted in the rate
    limiter's storage: per process with `memory://`, across processes with Redis. A slot whose
    process died mid-upload is given back when its counter expires (`ttl` after the first
    upload of a burst)."""

    def __init__(self, storage: Storage, limit: int, ttl: int):
        self.storage = storage
        self.limit = limit
        self.ttl = ttl

    @staticmethod
    def key(customer_id: uuid.UUID) -> str:
        return f"upload-slots/{customer_id}"

    def acquire(self, customer_id: uuid.UUID) -> bool:
        key = self.key(customer_id)
        with storage_errors():  # Redis unreachable: 503, not an unchecked upload
            if self.storage.incr(key, self.ttl) <= self.limit:
                return True
            self.release(customer_id)
        return False

    def release(self, customer_id: uuid.UUID) -> None:
        key = self.key(customer_id)
        decr = getattr(self.storage, "decr", None)  # memory storage: never below zero
        if decr is not None:
            decr(key)
        else:
            self.storage.incr(key, self.ttl, amount=-1)

    def in_use(self, customer_id: uuid.UUID) -> int:
        return int(self.storage.get(self.key(customer_id)))

    @classmethod
    def of(cls, storage: object, settings: Settings) -> UploadSlots:
        """With the rate limiter's storage (`storage_from_string` may also build async ones)."""
        if not isinstance(storage, Storage):
            raise TypeError(f"a synchronous limits storage is needed, not {storage!r}")
        return cls(
            storage,
            settings.MAX_CONCURRENT_UPLOADS_PER_CUSTOMER,
            settings.MAX_UPLOAD_SECONDS + _SLOT_GRACE_SECONDS,
        )

    @asynccontextmanager
    async def hold(self, customer_id: uuid.UUID) -> AsyncIterator[None]:
        """One slot for the block, or TooManyUploads (429) when all are taken."""
        if not await anyio.to_thread.run_sync(self.acquire, customer_id):
            raise TooManyUploads(
                f"{self.limit} uploads of this customer are already in progress; retry when "
                "one of them has ended.",
                retry_after=5,
            )
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._release_after_upload, customer_id)

    def _release_after_upload(self, customer_id: uuid.UUID) -> None:
        """The upload's outcome stands whatever happens here: a slot the storage could not
        take back (Redis gone meanwhile) is freed when its counter expires."""
        try:
            self.release(customer_id)
        except Exception as exc:
            log.warning(
                "could not give back an upload slot; it expires in %s s: %s: %s",
                self.ttl,
                type(exc).__name__,
                exc,
            )

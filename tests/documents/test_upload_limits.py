"""Uploads under load and faults: no pooled connection held while a body streams, a wall-time
limit, concurrent uploads per customer, documents per chatbot, whole-body and part-header caps,
database pool exhaustion and an unwritable disk. Nothing is left behind on any refusal."""

from __future__ import annotations

import asyncio
import errno
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from app.core.db import get_database
from app.documents import upload as upload_module
from app.documents.upload import UploadSlots
from app.models import Document
from tests import docgen
from tests.factories import Tenant, create_chatbot, register, upload
from tests.rawhttp import RawResponse, connect, read_response, request_head
from tests.waiting import eventually

BOUNDARY = "slowUploadBoundary42"


def _part_head(filename: str = "slow.txt") -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()


class SlowUpload:
    """An upload over a raw socket: the headers and the first bytes of the file, then nothing
    until `finish()` sends the rest (or the test closes it)."""

    def __init__(self, port: int, tenant: Tenant, chatbot_id: str, text: str) -> None:
        self.tail = b" and the rest of it.\r\n" + f"--{BOUNDARY}--\r\n".encode()
        first = _part_head() + text.encode()
        head = request_head(
            "POST",
            f"/api/upload/{chatbot_id}",
            {
                **tenant.headers,
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                "Content-Length": str(len(first) + len(self.tail)),
            },
        )
        self.sock: socket.socket = connect(port)
        self.sock.sendall(head + first)

    def finish(self) -> None:
        self.sock.sendall(self.tail)

    def response(self) -> RawResponse:
        return read_response(self.sock)

    def close(self) -> None:
        self.sock.close()


def _folder(settings: Any, tenant: Tenant, bot: dict[str, Any]) -> Path:
    return Path(settings.UPLOAD_DIR) / tenant.customer_id / bot["id"]


def _files(settings: Any, tenant: Tenant, bot: dict[str, Any]) -> list[Path]:
    folder = _folder(settings, tenant, bot)
    return sorted(folder.iterdir()) if folder.exists() else []


def _partial(settings: Any, tenant: Tenant, bot: dict[str, Any]) -> list[Path]:
    """Files still arriving (their final name is given once the row is inserted)."""
    return [p for p in _files(settings, tenant, bot) if p.suffix == ".upload"]


def _rows(db_session: Any, bot: dict[str, Any]) -> list[Document]:
    db_session.expire_all()
    query = select(Document).where(Document.chatbot_id == uuid.UUID(bot["id"]))
    return list(db_session.scalars(query).all())


def _slots_in_use(app: Any, tenant: Tenant) -> int:
    slots = UploadSlots.of(app.state.runtime.limiter.storage, app.state.settings)
    return slots.in_use(uuid.UUID(tenant.customer_id))


def _post_file(client: Any, tenant: Tenant, bot: dict[str, Any], name: str, content: bytes) -> Any:
    return client.post(
        f"/api/upload/{bot['id']}", files={"file": (name, content)}, headers=tenant.headers
    )


def test_hanging_uploads_hold_no_database_connection(
    app, client, live_server, live_url, settings, monkeypatch, db_session
):
    """40 uploads that send a few bytes and then wait: before, each held a pooled connection,
    and every other request waited for the pool (30 s, then 500)."""
    monkeypatch.setattr(settings, "MAX_CONCURRENT_UPLOADS_PER_CUSTOMER", 64)
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    other = register(client)
    other_bot = create_chatbot(client, other)
    port = live_server.config.port
    hanging = [SlowUpload(port, tenant, bot["id"], f"Slow file number {i}.") for i in range(40)]
    try:
        eventually(
            lambda: len(_partial(settings, tenant, bot)) == 40,
            bool,
            "40 uploads streaming",
            timeout=60,
        )
        assert _slots_in_use(app, tenant) == 40
        # The uploads are past their checks and wait for their bodies, holding no connection.
        assert get_database().engine.pool.checkedout() < 5  # type: ignore[attr-defined]
        with httpx.Client(base_url=live_url, timeout=60) as http:
            listing = http.get("/api/chatbots", headers=tenant.headers)
            assert listing.status_code == 200, listing.text
            assert bot["id"] in [item["id"] for item in listing.json()["items"]]
            me = http.get("/auth/me", headers=other.headers)
            assert me.status_code == 200 and me.json()["username"] == other.username
            quick = http.post(
                f"/api/upload/{other_bot['id']}",
                files={"file": ("quick.txt", b"Uploads of others go through meanwhile.")},
                headers=other.headers,
            )
            assert quick.status_code == 202, quick.text
    finally:
        for slow in hanging:
            slow.close()
    # The clients left: their files are removed, their slots given back, no row written.
    eventually(
        lambda: not _files(settings, tenant, bot), bool, "abandoned uploads removed", timeout=60
    )
    eventually(lambda: _slots_in_use(app, tenant) == 0, bool, "upload slots given back", timeout=60)
    assert _rows(db_session, bot) == []


def test_slow_upload_ends_with_408_and_leaves_nothing(
    app, client, live_server, settings, monkeypatch, db_session
):
    monkeypatch.setattr(settings, "MAX_UPLOAD_SECONDS", 2)
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    slow = [
        SlowUpload(live_server.config.port, tenant, bot["id"], f"Too slow {i}.") for i in range(3)
    ]
    try:
        for upload_ in slow:
            response = upload_.response()  # the server answers without the rest of the body
            assert response.status == 408, response.body
            assert response.json()["code"] == "upload_timeout"
            assert response.headers["connection"] == "close"
    finally:
        for upload_ in slow:
            upload_.close()
    assert _files(settings, tenant, bot) == []
    assert _rows(db_session, bot) == []
    assert _slots_in_use(app, tenant) == 0


def test_concurrent_uploads_are_capped_per_customer(
    app, client, live_server, settings, monkeypatch, tmp_path, db_session
):
    monkeypatch.setattr(settings, "MAX_CONCURRENT_UPLOADS_PER_CUSTOMER", 2)
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    other = register(client)
    other_bot = create_chatbot(client, other)
    port = live_server.config.port
    hanging = [SlowUpload(port, tenant, bot["id"], f"Hanging {i}.") for i in range(2)]
    try:
        eventually(
            lambda: len(_partial(settings, tenant, bot)) == 2,
            bool,
            "two uploads streaming",
            timeout=60,
        )
        third = _post_file(client, tenant, bot, "third.txt", b"One upload too many.")
        assert third.status_code == 429, third.text
        assert third.json()["code"] == "too_many_uploads"
        assert int(third.headers["retry-after"]) >= 1
        assert len(_files(settings, tenant, bot)) == 2  # the third never reached the disk
        # Another customer is not affected.
        elsewhere = _post_file(client, other, other_bot, "other.txt", b"Another customer.")
        assert elsewhere.status_code == 202, elsewhere.text
    finally:
        for slow in hanging:
            slow.close()
    eventually(lambda: _slots_in_use(app, tenant) == 0, bool, "upload slots given back", timeout=60)
    eventually(
        lambda: not _files(settings, tenant, bot), bool, "abandoned uploads removed", timeout=60
    )
    again = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "a.txt", "Now it fits."))
    assert again["status"] == "queued"
    assert [str(row.id) for row in _rows(db_session, bot)] == [again["id"]]


def test_document_cap_per_chatbot(client, settings, monkeypatch, db_session):
    monkeypatch.setattr(settings, "MAX_DOCUMENTS_PER_CHATBOT", 2)
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    for i in range(2):
        response = _post_file(client, tenant, bot, f"{i}.txt", f"Document {i}.".encode())
        assert response.status_code == 202, response.text
    third = _post_file(client, tenant, bot, "2.txt", b"Document 2.")
    assert third.status_code == 409, third.text
    assert third.json()["code"] == "document_limit_reached"
    rows = _rows(db_session, bot)
    assert len(rows) == 2
    stored = {(Path(settings.UPLOAD_DIR) / row.file_path).resolve() for row in rows}
    assert {p.resolve() for p in _files(settings, tenant, bot)} == stored


def test_document_cap_holds_for_uploads_arriving_together(
    client, live_server, settings, monkeypatch, db_session
):
    """Both uploads pass the early check (one document of two); the inserts are serialised on
    the chatbot's row, so exactly one of them gets in."""
    monkeypatch.setattr(settings, "MAX_DOCUMENTS_PER_CHATBOT", 2)
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    assert _post_file(client, tenant, bot, "first.txt", b"The first one.").status_code == 202
    port = live_server.config.port
    racing = [SlowUpload(port, tenant, bot["id"], f"Racing upload {i}.") for i in range(2)]
    try:
        eventually(
            lambda: len(_partial(settings, tenant, bot)) == 2,
            bool,
            "both uploads streaming",
            timeout=60,
        )
        for upload_ in racing:
            upload_.finish()
        responses = [upload_.response() for upload_ in racing]
    finally:
        for upload_ in racing:
            upload_.close()
    assert sorted(r.status for r in responses) == [202, 409], [r.body for r in responses]
    refused = next(r for r in responses if r.status == 409)
    assert refused.json()["code"] == "document_limit_reached"
    rows = _rows(db_session, bot)
    assert len(rows) == 2
    stored = {(Path(settings.UPLOAD_DIR) / row.file_path).resolve() for row in rows}
    assert {p.resolve() for p in _files(settings, tenant, bot)} == stored


def test_part_headers_over_the_cap_are_refused(client, settings, db_session):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    cap = settings.MAX_MULTIPART_HEADER_BYTES
    name = "n" * (cap + 1) + ".txt"
    one_long_line = _post_file(client, tenant, bot, name, b"A file with a very long name.")
    padding = "".join(f"X-Pad-{i}: {'p' * (cap // 3)}\r\n" for i in range(4))
    many_lines = client.post(
        f"/api/upload/{bot['id']}",
        content=_part_head().replace(b"\r\n\r\n", f"\r\n{padding}\r\n".encode())
        + b"Short file, long headers.\r\n"
        + f"--{BOUNDARY}--\r\n".encode(),
        headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    for response in (one_long_line, many_lines):
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "request_too_large"
    assert _files(settings, tenant, bot) == []
    assert _rows(db_session, bot) == []


def test_whole_multipart_body_is_capped(app, client, settings, monkeypatch, db_session):
    """A small file followed by an endless epilogue (which the multipart parser skips): the
    body is cut off at the upload's limit plus a small overhead."""
    monkeypatch.setattr(settings, "MAX_UPLOAD_MB", 1)
    limit = upload_module.upload_body_limit(settings)
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    pulled = [0]

    async def body():  # type: ignore[no-untyped-def]
        yield _part_head() + b"A small file.\r\n" + f"--{BOUNDARY}--\r\n".encode()
        for _ in range(64):
            pulled[0] += 64 * 1024
            yield b"e" * (64 * 1024)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post(
                f"/api/upload/{bot['id']}",
                content=body(),
                headers={
                    **tenant.headers,
                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                },
            )

    response = asyncio.run(send())
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "request_too_large"
    assert pulled[0] <= limit + 64 * 1024
    assert _files(settings, tenant, bot) == []
    assert _rows(db_session, bot) == []
    # Declared too large: refused before anything else (even before authentication).
    declared = client.post(
        f"/api/upload/{bot['id']}",
        content=b"x" * (limit + 1),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert declared.status_code == 413 and declared.json()["code"] == "request_too_large"


def test_pool_timeout_answers_503(client, settings, monkeypatch, database):
    """Every pooled connection busy: a real pool timeout (a pool of one, held by the test)."""
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    small = create_engine(database, pool_size=1, max_overflow=0, pool_timeout=0.2)
    held = small.connect()
    try:
        monkeypatch.setattr(
            get_database(), "sessionmaker", sessionmaker(small, expire_on_commit=False)
        )
        for method, path, extra in (
            ("GET", "/api/chatbots", {}),
            ("GET", "/auth/me", {}),
            ("POST", f"/api/upload/{bot['id']}", {"files": {"file": ("a.txt", b"Some text.")}}),
        ):
            response = client.request(method, path, headers=tenant.headers, **extra)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["code"] == "database_unavailable"
            assert int(response.headers["retry-after"]) >= 1
    finally:
        monkeypatch.undo()
        held.close()
        small.dispose()
    assert client.get("/api/chatbots", headers=tenant.headers).status_code == 200


class _FailingFile:
    """A real file whose writes fail like a full disk once `allowed` bytes are written."""

    created: list[Path] = []

    def __init__(self, path: Any, mode: str, allowed: int) -> None:
        self.file = open(path, mode)  # noqa: SIM115
        self.allowed = allowed
        self.written = 0
        _FailingFile.created.append(Path(path))

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.allowed:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


@pytest.mark.parametrize("fault", ["not_a_folder", "permission_denied", "disk_full"])
def test_unwritable_upload_folder_answers_507(
    client, settings, monkeypatch, tmp_path, db_session, fault
):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    content = b"0123456789abcdef" * (200 * 1024)  # 3.2 MB: several writes
    _FailingFile.created = []
    if fault == "not_a_folder":
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where the upload folder should be")
        monkeypatch.setattr(settings, "UPLOAD_DIR", blocker / "uploads")
    elif fault == "permission_denied":

        def denied(path: Any, mode: str) -> Any:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr(upload_module, "open", denied, raising=False)
    else:
        monkeypatch.setattr(
            upload_module,
            "open",
            lambda path, mode: _FailingFile(path, mode, allowed=1024 * 1024),
            raising=False,
        )
    response = _post_file(client, tenant, bot, "big.txt", content)
    assert response.status_code == 507, response.text
    assert response.json()["code"] == "insufficient_storage"
    assert "retry-after" in response.headers
    if fault == "disk_full":
        assert len(_FailingFile.created) == 1  # a file was half written...
        assert not _FailingFile.created[0].exists()  # ...and removed
    assert [p for p in _files(settings, tenant, bot) if p.is_file()] == []
    assert _rows(db_session, bot) == []
    if fault == "not_a_folder":
        assert blocker.is_file()

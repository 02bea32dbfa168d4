"""Every request body is capped before anything buffers it (BodyLimitMiddleware): a declared
Content-Length over the cap is refused at once, a chunked body is cut off where it crosses it."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest

from tests.factories import create_chatbot, register, unique
from tests.rawhttp import LAST_CHUNK, chunk, connect, read_response, request_head, rss_bytes

CAP = 8 * 1024


@pytest.fixture
def small_cap(settings, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(settings, "MAX_REQUEST_BYTES", CAP)
    return CAP


@pytest.fixture
def targets(client) -> list[tuple[str, str, dict[str, str]]]:  # type: ignore[no-untyped-def]
    """(method, path, headers): sign-up, the public query and a PATCH."""
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    return [
        ("POST", "/auth/register", {}),
        ("POST", f"/api/public/{bot['id']}/query", {"X-API-Key": bot["api_key"]}),
        ("PATCH", f"/api/chatbots/{bot['id']}", tenant.headers),
    ]


def _assert_too_large(status: int, headers: Any, body: Any) -> None:
    assert status == 413, body
    assert body["code"] == "request_too_large"
    assert "KB" in body["detail"] or "MB" in body["detail"]
    assert headers["connection"] == "close"
    assert headers["x-request-id"]  # answered inside the request-context middleware


def test_declared_oversize_bodies_are_refused(client, small_cap, targets):
    for method, path, headers in targets:
        response = client.request(
            method,
            path,
            content=b'{"name": "' + b"x" * CAP + b'"}',
            headers={**headers, "Content-Type": "application/json"},
        )
        _assert_too_large(response.status_code, response.headers, response.json())


def test_declared_oversize_is_refused_before_the_body_is_sent(live_server, small_cap, targets):
    """Over real HTTP: only the headers are sent; the answer comes without waiting for a body."""
    for method, path, headers in targets:
        with connect(live_server.config.port) as sock:
            sock.sendall(
                request_head(
                    method,
                    path,
                    {**headers, "Content-Type": "application/json", "Content-Length": "50000000"},
                )
            )
            response = read_response(sock)
        _assert_too_large(response.status, response.headers, response.json())


def _offered(total: int, piece: int, pulled: list[int]):  # type: ignore[no-untyped-def]
    async def body():  # type: ignore[no-untyped-def]
        for _ in range(total // piece):
            pulled[0] += piece
            yield b"x" * piece

    return body()


def test_chunked_oversize_bodies_are_cut_off_at_the_cap(app, client, small_cap, targets):
    """No Content-Length: the app is handed at most the cap; the rest is never read."""
    transport = httpx.ASGITransport(app=app)

    async def send(method: str, path: str, headers: dict[str, str], pulled: list[int]):  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.request(
                method,
                path,
                content=_offered(50 * 1024 * 1024, 1024, pulled),
                headers={**headers, "Content-Type": "application/json"},
            )

    for method, path, headers in targets:
        pulled = [0]
        response = asyncio.run(send(method, path, headers, pulled))
        assert "content-length" not in response.request.headers
        _assert_too_large(response.status_code, response.headers, response.json())
        assert pulled[0] <= CAP + 1024, (path, pulled[0])


def test_chunked_50mb_over_http_keeps_memory_flat(live_server, client):
    """The default cap (MAX_REQUEST_BYTES, 1 MiB) over real HTTP: a sender streams 50 MB of
    chunked JSON to the sign-up; the server answers 413 and its memory does not follow."""
    sock = connect(live_server.config.port)
    head = request_head(
        "POST",
        "/auth/register",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    piece = chunk(b" " * (1024 * 1024))
    sent = [0]
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sender() -> None:
        try:
            sock.sendall(head + chunk(b'{"username": "'))
            for _ in range(50):
                sock.sendall(piece)
                sent[0] += len(piece)
                peak[0] = max(peak[0], rss_bytes())
            sock.sendall(LAST_CHUNK)
        except OSError:
            pass  # the server answered and closed: the rest is not wanted
        finally:
            done.set()

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        response = read_response(sock)
    finally:
        assert done.wait(120)
        thread.join()
        sock.close()
    peak[0] = max(peak[0], rss_bytes())
    _assert_too_large(response.status, response.headers, response.json())
    # Before the cap, the server held the whole body (and more) before answering.
    assert peak[0] - before < 25 * 1024 * 1024, (before, peak[0])


def test_bodies_up_to_the_cap_are_untouched(client, small_cap):
    tenant = register(client)  # a normal sign-up: well under the cap
    bot = create_chatbot(client, tenant)
    base = json.dumps({"name": "", "description": ""})
    at_cap = json.dumps({"name": unique("Bot "), "description": "d" * (CAP - len(base) - 12)})
    padded = at_cap.encode().ljust(CAP)  # whitespace after JSON is valid
    assert len(padded) == CAP
    patched = client.patch(
        f"/api/chatbots/{bot['id']}",
        content=padded,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    # The cap did not interfere: whatever the route says about the content itself.
    assert patched.status_code != 413, patched.text
    assert patched.json().get("code") != "request_too_large"
    over = client.patch(
        f"/api/chatbots/{bot['id']}",
        content=padded + b" ",
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert over.status_code == 413 and over.json()["code"] == "request_too_large"
    small = client.patch(
        f"/api/chatbots/{bot['id']}", json={"name": "Renamed"}, headers=tenant.headers
    )
    assert small.status_code == 200 and small.json()["name"] == "Renamed"

"""A Chroma server behind an authenticating proxy (SECURITY.md's production setup): the store
sends CHROMA_AUTH_TOKEN as a bearer token on every request, and without it gets nothing."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from app.rag.vector_store import ChunkRecord, VectorStore, VectorStoreUnavailable

TOKEN = "proxy-token-for-chroma"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class AuthProxy:
    """Forwards to the Chroma server only requests that carry `Authorization: Bearer TOKEN`;
    answers 401 to the rest. Records what it saw."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[str | None] = []
        proxy = self
        http = httpx.Client(base_url=upstream, timeout=30)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                auth = self.headers.get("Authorization")
                proxy.seen.append(auth)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if auth != f"Bearer {TOKEN}":
                    payload = b'{"error":"Unauthorized"}'
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                answer = http.request(self.command, self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP | {"content-encoding"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._http = http

    def __enter__(self) -> AuthProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()


@pytest.fixture
def proxy(chroma_server: str) -> Iterator[AuthProxy]:
    with AuthProxy(chroma_server) as running:
        yield running


def test_the_store_sends_its_token_to_an_authenticating_proxy(proxy: AuthProxy) -> None:
    store = VectorStore(url=proxy.url, token=TOKEN)
    assert store.heartbeat() == "ok"
    chatbot, customer = uuid.uuid4(), uuid.uuid4()
    record = ChunkRecord("d:0", "opening hours", [1.0, 0.0, 0.0], {"document_id": "d"})
    store.add(chatbot, customer, "model-a", 3, [record])
    hits = store.query(chatbot, "model-a", [1.0, 0.0, 0.0], 3)
    assert [hit.id for hit in hits] == ["d:0"]
    store.delete_chatbot(chatbot)
    assert proxy.seen and set(proxy.seen) == {f"Bearer {TOKEN}"}


def test_without_the_token_the_proxy_lets_nothing_through(proxy: AuthProxy) -> None:
    anonymous = VectorStore(url=proxy.url)
    with pytest.raises(VectorStoreUnavailable):
        anonymous.query(uuid.uuid4(), "model-a", [1.0, 0.0, 0.0], 3)
    wrong = VectorStore(url=proxy.url, token="not-the-token")
    with pytest.raises(ValueError, match="Unauthorized"):  # the client turns a 401 into this
        wrong.heartbeat()
    assert proxy.seen and all(seen != f"Bearer {TOKEN}" for seen in proxy.seen)

"""A real loopback HTTP server speaking the Fireworks/OpenAI chat-completions protocol.

Tests point the LLM client at it instead of Fireworks, so the whole HTTP stack (httpx, the
fireworks SDK, SSE parsing, connection closing) is exercised without touching the network.

Usage::

    with FakeLLMServer() as server:
        settings = Settings(FIREWORKS_API_KEY="test-key", LLM_BASE_URL=server.base_url)
        ...
        assert server.requests[0]["model"] == settings.LLM_MODEL

or ``server = FakeLLMServer().start()`` ... ``server.stop()``.

``server.base_url`` is ``http://127.0.0.1:<port>/v1``: the OpenAI-style base, i.e. the value
for ``LLM_BASE_URL`` (the Fireworks one is ``https://api.fireworks.ai/inference/v1``). Both
``POST /v1/chat/completions`` and ``POST /chat/completions`` are served, so a client that
appends ``/chat/completions`` to a base without ``/v1`` works too.

Token counting is deliberately simple so tests can predict it: a "token" is a
whitespace-separated word (see ``count_words``, ``prompt_tokens``, ``completion_tokens``).

The server runs uvicorn (h11, asyncio) in a daemon thread with its own event loop; one
request never blocks another, so many concurrent requests and slow streams are fine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import uvicorn

__all__ = [
    "FakeLLMServer",
    "completion_tokens",
    "count_words",
    "default_reply",
    "prompt_tokens",
    "split_pieces",
]

CHAT_PATHS = frozenset({"/chat/completions", "/v1/chat/completions"})
DEFAULT_MODEL = "fake-model"

Scope = Mapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --- deterministic helpers (tests use them to compute expected values) ---


def count_words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI "content parts"
        return " ".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return ""


def prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Words across all message contents: what the server reports as ``prompt_tokens``."""
    return sum(count_words(_content_text(m.get("content"))) for m in messages)


def completion_tokens(answer: str) -> int:
    """Words in the answer: what the server reports as ``completion_tokens``."""
    return count_words(answer)


def default_reply(messages: Iterable[Mapping[str, Any]]) -> str:
    """The answer when no fixed reply is set: echoes the last user message's first 8 words."""
    last_user = ""
    for message in messages:
        if message.get("role") == "user":
            last_user = _content_text(message.get("content"))
    return "Answer: " + " ".join(last_user.split()[:8])


def split_pieces(answer: str) -> list[str]:
    """The streamed pieces: one word each, keeping whitespace, so ``"".join`` gives back
    the answer exactly."""
    return re.findall(r"^\s+|\S+\s*", answer)


# --- server ---


class _AbortConnection(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-response."""


class _Progress:
    finished = False


class _DropAbortTracebacks(logging.Filter):
    # uvicorn logs any exception escaping the app with a traceback; the deliberate
    # aborts are expected, so keep them out of test output.
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _AbortConnection)


_abort_filter = _DropAbortTracebacks()
logging.getLogger("uvicorn.error").addFilter(_abort_filter)


class FakeLLMServer:
    """Controls (all thread-safe; set them from the test thread at any time):

    - ``reply``: fixed answer text, or ``None`` (default) for ``default_reply(messages)``;
      ``set_reply(text)`` does the same.
    - ``fail_next(n, status=500)``: the next ``n`` requests get that status with an
      OpenAI-style error body; ``status=200``: an HTML page instead of an answer (garbage).
    - ``delay_seconds``: sleep before answering (headers included): for timeouts.
    - ``token_delay_seconds``: sleep between streamed chunks: for disconnects, heartbeats.
    - ``omit_usage``: send no ``usage`` at all (JSON or stream).
    - ``break_stream_after(n)``: the next stream drops the connection after ``n`` content
      chunks (an upstream failure mid-answer).
    - ``hold_stream_after(n)``: the next stream sends ``n`` content chunks, then waits until
      the returned ``threading.Event`` is set (a test looks at the half-streamed answer).

    Records: ``requests`` (parsed JSON bodies, in arrival order), ``request_headers``
    (lower-cased header dicts, same order), ``request_paths``, ``disconnects`` (streams
    whose client went away before the end). ``reset()`` restores defaults and clears them.
    """

    def __init__(self, *, model: str = DEFAULT_MODEL) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._reply: str | None = None
        self._fail_remaining = 0
        self._fail_status = 500
        self._break_after: int | None = None
        self._hold: tuple[int, threading.Event] | None = None
        self.delay_seconds = 0.0
        self.token_delay_seconds = 0.0
        self.omit_usage = False
        self._requests: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []
        self._paths: list[str] = []
        self._disconnects = 0
        self._active = 0
        self._max_active = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    # --- lifecycle ---

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeLLMServer is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """Without ``/v1``: for clients that append ``/chat/completions`` themselves."""
        return self.base_url.removesuffix("/v1")

    def start(self, timeout: float = 10.0) -> FakeLLMServer:
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        # Binding here (port 0) rather than in uvicorn lets base_url be known up front
        # and avoids a pick-a-free-port race. IPPROTO_TCP named explicitly: asyncio turns
        # Nagle's algorithm off (TCP_NODELAY) only on sockets that say they are TCP, and
        # without it every response's body waited ~40 ms for the client's delayed ACK of the
        # headers (a stall no real server has: uvicorn's own sockets say so).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            loop="asyncio",
            http="h11",
            ws="none",
            interface="asgi3",
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-llm", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FakeLLMServer failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = None
        self._thread = None
        self._sock = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- controls ---

    @property
    def reply(self) -> str | None:
        with self._lock:
            return self._reply

    @reply.setter
    def reply(self, text: str | None) -> None:
        with self._lock:
            self._reply = text

    def set_reply(self, text: str | None) -> None:
        self.reply = text

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._fail_remaining = n
            self._fail_status = status

    def break_stream_after(self, n_chunks: int) -> None:
        with self._lock:
            self._break_after = n_chunks

    def hold_stream_after(self, n_chunks: int) -> threading.Event:
        release = threading.Event()
        with self._lock:
            self._hold = (n_chunks, release)
        return release

    def reset(self) -> None:
        with self._lock:
            self._hold = None
            self._reply = None
            self._fail_remaining = 0
            self._fail_status = 500
            self._break_after = None
            self.delay_seconds = 0.0
            self.token_delay_seconds = 0.0
            self.omit_usage = False
            self._requests.clear()
            self._headers.clear()
            self._paths.clear()
            self._disconnects = 0
            self._max_active = self._active

    # --- records (snapshots, safe to iterate while the server runs) ---

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._headers)

    @property
    def request_paths(self) -> list[str]:
        with self._lock:
            return list(self._paths)

    @property
    def disconnects(self) -> int:
        with self._lock:
            return self._disconnects

    @property
    def max_concurrent(self) -> int:
        """The most requests in flight at once since start/reset."""
        with self._lock:
            return self._max_active

    def wait_for_disconnects(self, count: int = 1, timeout: float = 5.0) -> bool:
        """The server notices a dropped client asynchronously: poll for it."""
        deadline = time.monotonic() + timeout
        while self.disconnects < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # --- ASGI app ---

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body = await _read_body(receive)
        if scope["method"] != "POST" or path not in CHAT_PATHS:
            await _send_json(send, 404, _error_body("not found", "not_found_error", 404))
            return
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
                raise ValueError("messages must be a list")
        except ValueError as exc:
            await _send_json(send, 400, _error_body(str(exc), "invalid_request_error", 400))
            return

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            self._requests.append(payload)
            self._headers.append(headers)
            self._paths.append(path)
            fail_status: int | None = None
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                fail_status = self._fail_status
            streaming = bool(payload.get("stream"))
            break_after = self._break_after if streaming else None
            hold = self._hold if streaming else None
            if streaming:
                self._break_after = None
                self._hold = None
            self._active += 1
            self._max_active = max(self._max_active, self._active)
        try:
            await self._serve(payload, receive, send, fail_status, streaming, break_after, hold)
        finally:
            with self._lock:
                self._active -= 1

    async def _serve(
        self,
        payload: dict[str, Any],
        receive: Receive,
        send: Send,
        fail_status: int | None,
        streaming: bool,
        break_after: int | None,
        hold: tuple[int, threading.Event] | None = None,
    ) -> None:
        done = _Progress()

        async def respond() -> None:
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            if fail_status == 200:  # a 200 that is not an answer (a proxy's error page)
                page = b"<html><body>502 Bad Gateway (from a proxy)</body></html>"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/html"),
                            (b"content-length", b"%d" % len(page)),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": page, "more_body": False})
            elif fail_status is not None:
                await _send_json(
                    send, fail_status, _error_body("injected failure", "server_error", fail_status)
                )
            elif streaming:
                await self._stream(payload, send, break_after, done, hold)
            else:
                await _send_json(send, 200, self._completion(payload))

        # The app must notice a client that goes away (uvicorn then silently drops our
        # writes), so race the response against the disconnect message.
        responder = asyncio.ensure_future(respond())
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({responder, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            client_left = watcher.done() and not watcher.cancelled()
            watcher.cancel()
            if not responder.done():
                responder.cancel()
            await asyncio.gather(responder, watcher, return_exceptions=True)
        if streaming and client_left and not done.finished:
            with self._lock:
                self._disconnects += 1
        failure = None if responder.cancelled() else responder.exception()
        if failure is not None:
            raise failure

    def _answer(self, payload: dict[str, Any]) -> str:
        reply = self.reply
        return reply if reply is not None else default_reply(payload["messages"])

    def _usage(self, payload: dict[str, Any], answer: str) -> dict[str, int]:
        prompt = prompt_tokens(payload["messages"])
        completion = completion_tokens(answer)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(self, payload: dict[str, Any]) -> dict[str, Any]:
        answer = self._answer(payload)
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
        }
        if not self.omit_usage:
            body["usage"] = self._usage(payload, answer)
        return body

    async def _stream(
        self,
        payload: dict[str, Any],
        send: Send,
        break_after: int | None,
        done: _Progress,
        hold: tuple[int, threading.Event] | None = None,
    ) -> None:
        answer = self._answer(payload)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": payload.get("model") or self.model,
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )

        async def event(data: dict[str, Any] | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {text}\n\n".encode(),
                    "more_body": True,
                }
            )

        for i, piece in enumerate(split_pieces(answer)):
            if break_after is not None and i >= break_after:
                raise _AbortConnection
            if hold is not None and i == hold[0]:
                await asyncio.to_thread(hold[1].wait, 60)
            if i and self.token_delay_seconds:
                await asyncio.sleep(self.token_delay_seconds)
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            await event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        if break_after is not None:
            raise _AbortConnection
        if self.token_delay_seconds:
            await asyncio.sleep(self.token_delay_seconds)

        finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = None if self.omit_usage else self._usage(payload, answer)
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        if usage is not None and include_usage:
            # OpenAI style: a separate last chunk with empty choices.
            await event(finish)
            await event({**base, "choices": [], "usage": usage})
        elif usage is not None:
            # Fireworks' historical style: usage rides on the finish chunk.
            await event({**finish, "usage": usage})
        else:
            await event(finish)
        await event("[DONE]")
        # Set before the final write: uvicorn reports "disconnect" as soon as the response
        # is complete, and that must not count as the client going away.
        done.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _error_body(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": str(code)}}


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": False})

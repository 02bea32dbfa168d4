"""Pure ASGI middleware (streaming-safe): request id, access log, Prometheus metrics, request
body caps."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import InternalError, RequestTooLarge
from app.core.logging import request_id_var

log = logging.getLogger("app.access")

REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to the response's first byte",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INTERNAL_ERROR_BODY = json.dumps(InternalError().body()).encode()
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming if incoming and _VALID_REQUEST_ID.match(incoming) else secrets.token_hex(8)
        )
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                LATENCY.labels(scope["method"], _route(scope)).observe(
                    time.perf_counter() - started
                )
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Answer here rather than in Starlette's outermost handler, so the 500 carries the
            # request id too; the trace goes to the log only.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status_holder.get("started"):
                raise
            await send_wrapper(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send_wrapper({"type": "http.response.body", "body": INTERNAL_ERROR_BODY})
        finally:
            route = _route(scope)
            REQUESTS.labels(scope["method"], route, str(status_holder["status"])).inc()
            if route not in ("/health", "/metrics"):
                log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status_holder["status"],
                    extra={
                        "status": status_holder["status"],
                        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                        "route": route,
                    },
                )
            request_id_var.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class BodyLimitMiddleware:
    """Caps every request body before anything buffers it (FastAPI reads a JSON body whole,
    before the endpoint and its authentication run).

    A declared Content-Length over the cap is refused at once, without reading the body. A
    body without one (chunked) is counted as it arrives: the message that crosses the cap is
    not passed on; the app sees the client disconnect instead (`ClientDisconnect`), whatever
    it answers to that is dropped, and the 413 is sent here. Once the app has started its
    response, a 413 is no longer possible: the app only sees the disconnect and ends.
    Limits are read per request (`default`, or the first matching path prefix in `larger`),
    so they follow the settings object.
    """

    def __init__(
        self,
        app: ASGIApp,
        default: Callable[[], int],
        larger: Mapping[str, Callable[[], int]] | None = None,
    ):
        self.app = app
        self.default = default
        self.larger = dict(larger or {})

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.larger.items():
            if path.startswith(prefix):
                return limit()
        return self.default()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        received = 0
        cut_off = False
        app_started = False

        async def counting_receive() -> Message:
            nonlocal received, cut_off
            if cut_off:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut_off = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if cut_off and not app_started:
                return  # the app's answer to the "disconnect": the 413 below replaces it
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not cut_off or app_started:
                raise
            # The app failed on the body we cut off (ClientDisconnect): expected, answered below.
            log.debug("request body cut off at %d bytes on %s", limit, scope["path"])
        if cut_off and not app_started:
            await _too_large(send, limit)


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the server refuses a malformed Content-Length itself


async def _too_large(send: Send, limit: int) -> None:
    error = RequestTooLarge(
        f"The request body is larger than this endpoint accepts ({_size(limit)})."
    )
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB".replace(".0 MB", " MB")
    return f"{n / 1024:.0f} KB"


class TenantCORSMiddleware(CORSMiddleware):
    """CORS for the tenant API (a dashboard's origins). The public query endpoint answers CORS
    itself, per chatbot (its allowed_origins), so it is left alone here."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/public/"):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

"""Pure ASGI middleware (streaming-safe): request id, access log, Prometheus metrics."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import InternalError
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


class TenantCORSMiddleware(CORSMiddleware):
    """CORS for the tenant API (a dashboard's origins). The public query endpoint answers CORS
    itself, per chatbot (its allowed_origins), so it is left alone here."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/public/"):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

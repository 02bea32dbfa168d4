"""CORS for the public endpoints: each chatbot's `allowed_origins` decides who may read.

The public routes answer CORS themselves (the app-wide middleware leaves `/api/public/` alone):
a preflight from a refused origin gets no CORS headers, and once the origin is known to be
allowed every later error carries them, so the widget can tell a visitor why it failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.responses import Response

from app.core.errors import AppError, OriginNotAllowed
from app.query.service import Asker, origin_allowed

ALLOWED_HEADERS = "Content-Type, X-API-Key, Accept, X-Request-ID"
QUERY_METHODS = "POST, OPTIONS"
READ_METHODS = "GET, OPTIONS"
_HEADER_LIST = re.compile(r"^[A-Za-z0-9-]+(\s*,\s*[A-Za-z0-9-]+)*$")


def cors_headers(origin: str, methods: str, requested_headers: str | None = None) -> dict[str, str]:
    # No cookies are involved (the key is a header), so echoing the requested headers is safe.
    allow = (
        requested_headers if requested_headers and _HEADER_LIST.match(requested_headers) else None
    )
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": allow or ALLOWED_HEADERS,
        "Access-Control-Expose-Headers": "Retry-After, X-Request-ID",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


@contextmanager
def public_errors(readable_by: str | None, methods: str) -> Iterator[None]:
    """Errors raised inside leave with CORS headers for `readable_by` (None: without), and
    with details meant for visitors (no model names, paths or tenant endpoints)."""
    try:
        yield
    except AppError as exc:
        if exc.public_detail:
            exc.detail = exc.public_detail
        if readable_by:
            exc.headers = {**(exc.headers or {}), **cors_headers(readable_by, methods)}
        raise


def preflight(
    asker: Asker,
    origin: str | None,
    requested_headers: str | None,
    methods: str,
    *,
    any_origin: bool = False,
) -> Response:
    """The answer to an `OPTIONS` preflight: 204 with CORS headers for an allowed origin (or
    any, where the request itself checks), else 403 without them."""
    if not origin:
        return Response(status_code=204)
    if not any_origin and not origin_allowed(asker.allowed_origins, origin):
        raise OriginNotAllowed()
    return Response(status_code=204, headers=cors_headers(origin, methods, requested_headers))

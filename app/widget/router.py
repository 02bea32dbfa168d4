"""GET /widget.js: the script the embed snippet loads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app.core.schemas import errors
from app.widget.asset import widget_asset

router = APIRouter(tags=["widget"])

# The snippet asks for /widget.js?v=<version>: that URL never changes content, so browsers and
# CDNs may keep it for a year. Without (or with an old) version, a short lifetime and the ETag.
_IMMUTABLE = "public, max-age=31536000, immutable"
_SHORT = "public, max-age=300"


@router.get(
    "/widget.js",
    response_class=Response,
    responses={
        200: {"content": {"text/javascript": {}}, "description": "The widget script"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **errors(422),
    },
    summary="The embeddable chat widget (loaded by the snippet)",
)
async def widget_js(
    v: Annotated[str | None, Query(max_length=64, description="The snippet's version tag.")] = None,
    if_none_match: Annotated[str | None, Header()] = None,
    accept_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    asset = widget_asset()
    headers = {
        "Cache-Control": _IMMUTABLE if v == asset.version else _SHORT,
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
        # Pages with Cross-Origin-Embedder-Policy may load it; `crossorigin` tags may too.
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Access-Control-Allow-Origin": "*",
    }
    if if_none_match and _matches(if_none_match, asset.etag):
        return Response(status_code=304, headers=headers)
    body = asset.body
    if accept_encoding and "gzip" in accept_encoding.lower():
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)


# HEAD answers the same headers (uvicorn sends no body); one operation in the OpenAPI document.
router.add_api_route("/widget.js", widget_js, methods=["HEAD"], include_in_schema=False)


def _matches(if_none_match: str, etag: str) -> bool:
    # Weak comparison (RFC 9110): proxies that re-compress mark the tag W/.
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.auth.dependencies import QueryClaims
from app.chatbots.dependencies import OwnedChatbot
from app.core.db import DatabaseDep, SessionDep
from app.core.deps import ClientIP, SettingsDep
from app.core.schemas import Page, Pagination, errors
from app.query import service
from app.query.answering import SSE_HEADERS, StreamedAnswer, answer_json
from app.query.dependencies import Tools
from app.query.public import (
    QUERY_METHODS,
    READ_METHODS,
    cors_headers,
    preflight,
    public_errors,
)
from app.query.schemas import (
    DemoResponse,
    HistoryItem,
    PublicChatbot,
    QueryRequest,
    QueryResponse,
    sse_event_schema,
)
from app.query.service import Asker
from app.runtime import LimiterDep

router = APIRouter(tags=["query"])

_STREAM_DOC = {
    "content": {
        "text/event-stream": {
            "itemSchema": sse_event_schema(),
            "example": 'event: sources\ndata: [...]\n\nevent: token\ndata: {"text": "Hi"}\n\n'
            'event: done\ndata: {"usage": {...}, "message_id": "...", "session_id": "..."}\n\n',
        }
    },
    "description": "JSON, or Server-Sent Events with `stream: true` or `Accept: text/event-stream`",
}
PUBLIC_ERRORS = errors(401, 403, 404, 409, 402, 422, 429, 503)


class AnswerStreamResponse(StreamingResponse):
    """The SSE answer, closed whatever happens to the response: Starlette never starts the
    body of a response whose client already left, and only `close()` settles that one."""

    def __init__(self, answer: StreamedAnswer):
        super().__init__(answer.events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.answer.close()


# A JSON answer whose client left is not sent; this status only reaches the access log
# (nginx's "client closed request").
CLIENT_CLOSED_REQUEST = 499


async def _answer(
    tools: Tools, admit: Callable[[], Asker], body: QueryRequest, request: Request
) -> Response:
    """`admit` runs in the same worker thread as the preparation (one hop, not two)."""
    session_id = body.session_id or uuid.uuid4().hex
    prepared = await to_thread.run_sync(
        service.prepare, tools, admit, body.question, session_id, not body.session_id
    )
    if body.stream or "text/event-stream" in request.headers.get("accept", ""):
        return AnswerStreamResponse(StreamedAnswer(tools, prepared))

    async def client_left() -> None:
        # The body has been read: the next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    result = await answer_json(tools, prepared, client_left)
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return JSONResponse(result.model_dump(mode="json"))


def _admit_user(
    tools: Tools,
    claims: QueryClaims,
    chatbot_id: uuid.UUID,
    *,
    path_customer_id: uuid.UUID | None = None,
    demo: bool = False,
) -> Callable[[], Asker]:
    """The two JWT routes' admission: the chatbot must be the token's customer's."""
    return functools.partial(
        service.admit_user,
        tools.db,
        claims,
        chatbot_id,
        path_customer_id=path_customer_id,
        demo=demo,
    )


@router.options("/api/public/{chatbot_id}", include_in_schema=False)
async def public_chatbot_preflight(
    chatbot_id: uuid.UUID,
    db: DatabaseDep,
    origin: Annotated[str | None, Header()] = None,
    access_control_request_headers: Annotated[str | None, Header()] = None,
) -> Response:
    """Any origin may send the read: the GET itself checks the origin and says why it refused,
    so a widget pasted on the wrong site can show "not allowed" instead of a network error."""
    asker = await to_thread.run_sync(service.load_public_chatbot, db, chatbot_id)
    return preflight(asker, origin, access_control_request_headers, READ_METHODS, any_origin=True)


@router.get(
    "/api/public/{chatbot_id}",
    response_model=PublicChatbot,
    responses=errors(401, 403, 404, 422, 429),
    summary="What the widget shows: the chatbot's name and welcome message (public: X-API-Key)",
)
async def public_chatbot(
    chatbot_id: uuid.UUID,
    db: DatabaseDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    ip: ClientIP,
    x_api_key: Annotated[str | None, Header()] = None,
    origin: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    # Every answer is readable by the asking origin: the refusal (403) is the information a
    # widget on the wrong site needs; the profile itself is only given to allowed origins.
    with public_errors(origin, READ_METHODS):
        asker, profile = await to_thread.run_sync(
            service.load_public_profile, db, settings, chatbot_id
        )
        await to_thread.run_sync(
            lambda: service.check_public(
                asker, limiter, settings, x_api_key, origin, ip, reading=True
            )
        )
    headers = cors_headers(origin, READ_METHODS) if origin else None
    return JSONResponse(profile.model_dump(mode="json"), headers=headers)


@router.options("/api/public/{chatbot_id}/query", include_in_schema=False)
async def public_query_preflight(
    chatbot_id: uuid.UUID,
    db: DatabaseDep,
    origin: Annotated[str | None, Header()] = None,
    access_control_request_headers: Annotated[str | None, Header()] = None,
) -> Response:
    """CORS preflight: allowed origins get CORS headers; others a 403 without them."""
    asker = await to_thread.run_sync(service.load_public_chatbot, db, chatbot_id)
    return preflight(asker, origin, access_control_request_headers, QUERY_METHODS)


@router.post(
    "/api/public/{chatbot_id}/query",
    response_model=QueryResponse,
    responses={200: _STREAM_DOC, **PUBLIC_ERRORS},
    summary="Ask a chatbot (public: its API key in X-API-Key; for websites and the widget)",
)
async def public_query(
    chatbot_id: uuid.UUID,
    body: QueryRequest,
    request: Request,
    tools: Tools,
    limiter: LimiterDep,
    ip: ClientIP,
    x_api_key: Annotated[str | None, Header()] = None,
    origin: Annotated[str | None, Header()] = None,
) -> Response:

    def admit() -> tuple[Asker, str | None]:
        asker = service.load_public_chatbot(tools.db, chatbot_id)
        # Known from here on: an allowed website can read every later error (401, 429...).
        allowed = (
            origin if origin and service.origin_allowed(asker.allowed_origins, origin) else None
        )
        with public_errors(allowed, QUERY_METHODS):
            service.check_public(
                asker, limiter, tools.settings, x_api_key, origin, ip, session_id=body.session_id
            )
        return asker, allowed

    asker, allowed_origin = await to_thread.run_sync(admit)  # one thread hop for both
    with public_errors(allowed_origin, QUERY_METHODS):
        response = await _answer(tools, lambda: asker, body, request)
    if allowed_origin:
        response.headers.update(cors_headers(allowed_origin, QUERY_METHODS))
    return response


@router.post(
    "/api/{customer_id}/{chatbot_id}/query",
    response_model=QueryResponse,
    responses={200: _STREAM_DOC, **errors(401, 402, 403, 404, 409, 422, 429, 503)},
    summary="Ask one of your chatbots (JWT)",
)
async def customer_query(
    customer_id: uuid.UUID,
    chatbot_id: uuid.UUID,
    body: QueryRequest,
    request: Request,
    claims: QueryClaims,
    tools: Tools,
) -> Response:
    admit = _admit_user(tools, claims, chatbot_id, path_customer_id=customer_id)
    return await _answer(tools, admit, body, request)


@router.post(
    "/api/chatbots/{chatbot_id}/demo",
    response_model=DemoResponse,
    responses={200: _STREAM_DOC, **errors(401, 404, 409, 422, 429, 503)},
    summary="Try a chatbot: free messages (by default 10 per chatbot, 50 per customer) (JWT)",
)
async def demo_query(
    chatbot_id: uuid.UUID,
    body: QueryRequest,
    request: Request,
    claims: QueryClaims,
    tools: Tools,
) -> Response:
    return await _answer(tools, _admit_user(tools, claims, chatbot_id, demo=True), body, request)


@router.get(
    "/api/chatbots/{chatbot_id}/history",
    response_model=Page[HistoryItem],
    responses=errors(401, 404, 422),
    summary="Answered questions, newest first (optionally one session)",
)
def history(
    chatbot: OwnedChatbot,
    session: SessionDep,
    page: Pagination,
    session_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")] = None,
) -> Page[HistoryItem]:
    rows, total = service.list_history(session, chatbot.id, page, session_id)
    return Page[HistoryItem].of(rows, total, page)

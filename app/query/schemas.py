from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool

from app.core.schemas import NoNul, NotBlank, Schema, StripNoNul

Mode = Literal["llm", "extractive", "fallback"]
# The hard cap of the schema; the deployment's limit is QUESTION_MAX_CHARS (default 2000,
# at most this), checked by the query path (422 question_too_long).
QUESTION_MAX_LENGTH = 10_000


class QueryRequest(Schema):
    question: Annotated[
        str,
        Field(
            min_length=1,
            max_length=QUESTION_MAX_LENGTH,
            description="At most QUESTION_MAX_CHARS characters (default 2000; "
            "`question_max_length` of GET /api/public/{chatbot_id}).",
            examples=["When are you open?"],
        ),
        StripNoNul,
        NotBlank,
    ]
    session_id: Annotated[
        str | None,
        Field(
            max_length=64,
            pattern=r"^[A-Za-z0-9_.:-]+$",
            description="Groups a conversation; omit to start one (the answer returns its id).",
        ),
        NoNul,
    ] = None
    stream: StrictBool = Field(default=False, description="Answer as Server-Sent Events.")


class Source(Schema):
    document_id: uuid.UUID
    filename: str
    chunk_index: int
    page: int | None = None
    heading: str | None = Field(
        default=None,
        description='The headings the passage sits under in its document ("Returns > Refunds").',
    )
    score: float = Field(
        description="In dense retrieval, the cosine similarity of the passage to the question; "
        "in hybrid and lexical retrieval, its reciprocal-rank-fused score (the sum of "
        "1 / (60 + rank) over the retrievers that found it)."
    )
    retrievers: list[Literal["dense", "lexical", "exact"]] = Field(
        description="Which retrievers found the passage; exact: it holds a code, number or "
        "name of the question that few passages hold (a third ranking in the fusion)."
    )
    text: str


class Usage(Schema):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class QueryResponse(Schema):
    answer: str
    sources: list[Source]
    usage: Usage
    session_id: str
    message_id: uuid.UUID
    mode: Mode = Field(
        description="`llm`: generated; `extractive`: quotes of the best passages (no LLM "
        "configured); `fallback`: nothing relevant was found (no LLM call)."
    )


class DemoResponse(QueryResponse):
    demo_messages_remaining: int


class HistoryItem(Schema):
    id: uuid.UUID
    session_id: str
    user_id: uuid.UUID | None
    question: str
    answer: str
    sources: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    mode: str
    is_demo: bool
    interrupted: bool
    latency_ms: int
    timestamp: datetime


class PublicChatbot(Schema):
    """What a visitor's widget shows; nothing about the tenant, its keys or its settings."""

    chatbot_id: uuid.UUID
    name: str
    welcome_message: str | None
    question_max_length: int = Field(description="The longest question the query accepts.")


# --- the Server-Sent Events of a streamed answer, as OpenAPI documents them ---


class TokenEvent(Schema):
    text: str = Field(description="The next piece of the answer.")


class DoneEvent(Schema):
    usage: Usage
    message_id: uuid.UUID
    session_id: str
    mode: Mode
    demo_messages_remaining: int | None = Field(default=None, description="Demo answers only.")


def _event(name: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "properties": {
            "event": {"const": name},
            "data": {"contentMediaType": "application/json", "contentSchema": content},
        }
    }


def sse_event_schema() -> dict[str, Any]:
    """Each event of a streamed answer (`itemSchema`: one schema per event): `sources` (the
    list), then `token`s, then `done`, or `error` instead of `done`."""
    ref = "#/components/schemas/{model}"
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["sources", "token", "done", "error"]},
            "data": {"type": "string"},
        },
        "oneOf": [
            _event("sources", {"type": "array", "items": {"$ref": ref.format(model="Source")}}),
            _event("token", TokenEvent.model_json_schema(ref_template=ref)),
            _event("done", DoneEvent.model_json_schema(ref_template=ref)),
            _event("error", {"$ref": ref.format(model="ErrorBody")}),
        ],
    }

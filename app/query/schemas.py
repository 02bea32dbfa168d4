from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from app.core.schemas import NoNul, NotBlank, Schema, StripNoNul

Mode = Literal["llm", "extractive", "fallback"]
QUESTION_MAX_LENGTH = 2000


class QueryRequest(Schema):
    question: Annotated[
        str,
        Field(min_length=1, max_length=QUESTION_MAX_LENGTH, examples=["When are you open?"]),
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
    stream: bool = Field(default=False, description="Answer as Server-Sent Events.")


class Source(Schema):
    document_id: uuid.UUID
    filename: str
    chunk_index: int
    page: int | None = None
    score: float = Field(description="Cosine similarity of the passage to the question.")
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

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StrictFloat, StrictInt

from app.core.schemas import NoNul, NotBlank, Schema, StripNoNul
from app.documents.passages import LANGUAGES

_HOST = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$|^[0-9a-f:.]+$"
)


def _origin(value: str) -> str:
    """`scheme://host[:port]`, as browsers send it in the Origin header."""
    value = value.strip().rstrip("/").lower()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an origin looks like https://www.example.com (scheme and host)")
    try:
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError as exc:
        raise ValueError("the origin's port is not valid") from exc
    if not _HOST.match(parts.hostname):
        raise ValueError("the origin's host name is not valid")
    if parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError("an origin has no path, query or credentials: https://www.example.com")
    return value


Origin = Annotated[str, Field(max_length=255), NoNul, AfterValidator(_origin)]
ChatbotName = Annotated[str, Field(max_length=200, examples=["Support bot"]), StripNoNul, NotBlank]
Description = Annotated[str, Field(max_length=2000), NoNul]
SystemPrompt = Annotated[
    str,
    Field(max_length=8000, examples=["You are Acme's friendly support assistant."]),
    NoNul,
]
Temperature = Annotated[StrictFloat, Field(ge=0, le=2)]
# Strict: 5, not "5" or 5.0 (the schema says integer; a client sending otherwise is told so).
TopK = Annotated[StrictInt, Field(ge=1, le=20)]
Origins = Annotated[list[Origin], Field(max_length=50, examples=[["https://www.acme.example"]])]
WelcomeMessage = Annotated[str, Field(max_length=1000), NoNul]
MonthlyTokenLimit = Annotated[
    StrictInt,
    Field(
        ge=0,
        le=10**12,
        description="Tokens the chatbot may spend per calendar month (UTC); past it its "
        "public endpoint answers 402. Admins only; null: no limit.",
    ),
]


RetrievalMode = Annotated[
    Literal["dense", "hybrid", "lexical"],
    Field(
        description="How passages are found: dense (embeddings), lexical (full-text search) or "
        "hybrid (both, fused by rank); null: the server's RETRIEVAL_MODE."
    ),
]


def _language(value: str) -> str:
    if value not in LANGUAGES:
        raise ValueError(f"a language is one of: {', '.join(LANGUAGES)}")
    return value


Language = Annotated[
    str,
    Field(
        max_length=32,
        examples=["english"],
        description="The documents' language for full-text search (stemming, stop words) on "
        "PostgreSQL; null: simple (no stemming).",
        json_schema_extra={"enum": list(LANGUAGES)},
    ),
    AfterValidator(_language),
]


class ChatbotCreate(Schema):
    name: ChatbotName
    description: Description | None = None
    system_prompt: SystemPrompt | None = None
    temperature: Temperature | None = None
    top_k: TopK = 5
    allowed_origins: Origins = Field(default_factory=list)
    welcome_message: WelcomeMessage | None = None
    monthly_token_limit: MonthlyTokenLimit | None = None
    retrieval_mode: RetrievalMode | None = None
    language: Language | None = None


class ChatbotUpdate(Schema):
    """Only the fields sent are changed; `null` clears an optional field. `name`, `top_k`
    and `allowed_origins` cannot be null (the schema says so): leave them out instead."""

    # Not Optional, defaults never validated: absent is fine, null is a 422.
    name: ChatbotName = Field(default=None)  # type: ignore[assignment]
    top_k: TopK = Field(default=None)  # type: ignore[assignment]
    allowed_origins: Origins = Field(default=None)  # type: ignore[arg-type]
    description: Description | None = None
    system_prompt: SystemPrompt | None = None
    temperature: Temperature | None = None
    welcome_message: WelcomeMessage | None = None
    monthly_token_limit: MonthlyTokenLimit | None = None
    retrieval_mode: RetrievalMode | None = None
    language: Language | None = None


class Chatbot(Schema):
    id: uuid.UUID
    customer_id: uuid.UUID
    name: str
    description: str | None
    system_prompt: str | None
    temperature: float | None
    top_k: int
    allowed_origins: list[str]
    welcome_message: str | None
    monthly_token_limit: int | None
    retrieval_mode: str | None
    language: str | None
    api_key: str = Field(description="Publishable key for the public query endpoint and widget.")
    demo_message_count: int
    created_at: datetime
    updated_at: datetime


class Snippet(Schema):
    chatbot_id: uuid.UUID
    script_url: str
    snippet: str


class ApiKey(Schema):
    chatbot_id: uuid.UUID
    api_key: str

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from app.core.schemas import CleanStr, Schema, StrippedStr


def _origin(value: str) -> str:
    """`scheme://host[:port]`, as browsers send it in the Origin header."""
    value = value.strip().rstrip("/").lower()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an origin looks like https://www.example.com (scheme and host)")
    if parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError("an origin has no path, query or credentials: https://www.example.com")
    return value


Origin = Annotated[CleanStr, Field(max_length=255), AfterValidator(_origin)]
ChatbotName = Annotated[StrippedStr, Field(max_length=200, examples=["Support bot"])]
Description = Annotated[CleanStr, Field(max_length=2000)]
SystemPrompt = Annotated[
    CleanStr,
    Field(max_length=8000, examples=["You are Acme's friendly support assistant."]),
]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopK = Annotated[int, Field(ge=1, le=20)]
Origins = Annotated[list[Origin], Field(max_length=50, examples=[["https://www.acme.example"]])]
WelcomeMessage = Annotated[CleanStr, Field(max_length=1000)]


class ChatbotCreate(Schema):
    name: ChatbotName
    description: Description | None = None
    system_prompt: SystemPrompt | None = None
    temperature: Temperature | None = None
    top_k: TopK = 5
    allowed_origins: Origins = Field(default_factory=list)
    welcome_message: WelcomeMessage | None = None


class ChatbotUpdate(Schema):
    """Only the fields sent are changed; `null` clears an optional field."""

    name: ChatbotName | None = None
    description: Description | None = None
    system_prompt: SystemPrompt | None = None
    temperature: Temperature | None = None
    top_k: TopK | None = None
    allowed_origins: Origins | None = None
    welcome_message: WelcomeMessage | None = None


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

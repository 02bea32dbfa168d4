from __future__ import annotations

from datetime import datetime

from app.core.schemas import Schema


class UsageSummary(Schema):
    tokens_used: int
    tokens_remaining: int
    input_tokens_used: int
    output_tokens_used: int
    last_updated: datetime

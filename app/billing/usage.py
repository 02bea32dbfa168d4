"""What a customer spent in a period: per chatbot and per day, from the chat history.

One grouped query (chatbot x day x demo) gives every breakdown, so the per-chatbot rows, the
per-day rows and the totals add up exactly, even while answers are being written.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.billing.service import month_of
from app.core.errors import ValidationFailed
from app.models import Chatbot, ChatbotMonthlyUsage, ChatHistory
from app.models.base import utcnow

MAX_PERIOD_DAYS = 366


@dataclass
class Counts:
    questions: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    demo_messages: int = 0
    demo_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: Counts) -> None:
        self.questions += other.questions
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.demo_messages += other.demo_messages
        self.demo_tokens += other.demo_tokens


@dataclass
class ChatbotLine:
    chatbot_id: uuid.UUID
    name: str
    monthly_token_limit: int | None
    month_tokens: int
    counts: Counts = field(default_factory=Counts)

    @property
    def limit_reached(self) -> bool:
        limit = self.monthly_token_limit
        return limit is not None and self.month_tokens >= limit


@dataclass
class Cell:
    """One (day, chatbot) of the period: a row of the CSV export."""

    day: date
    chatbot_id: uuid.UUID
    counts: Counts


@dataclass
class UsageReport:
    start: date
    end: date
    totals: Counts
    by_chatbot: list[ChatbotLine]
    by_day: list[tuple[date, Counts]]
    cells: list[Cell]


def period(start: date | None, end: date | None, today: date | None = None) -> tuple[date, date]:
    """The days asked for, both included. Default: the current month (UTC); with only `to`,
    from the first of its month; with only `from`, to the end of the current month."""
    today = today or utcnow().date()
    start = start or (end.replace(day=1) if end else today.replace(day=1))
    end = end or max(_month_end(today), _month_end(start))
    if end < start:
        raise ValidationFailed("`to` is before `from`.", loc=("query", "to"))
    if (end - start).days + 1 > MAX_PERIOD_DAYS:
        raise ValidationFailed(
            f"A period covers at most {MAX_PERIOD_DAYS} days.", loc=("query", "from")
        )
    return start, end


def _month_end(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1) - timedelta(days=1)


def usage_report(session: Session, customer_id: uuid.UUID, start: date, end: date) -> UsageReport:
    since = datetime(start.year, start.month, start.day, tzinfo=UTC)
    until = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    day = func.date(ChatHistory.timestamp)
    grouped = session.execute(
        select(
            ChatHistory.chatbot_id,
            day,
            ChatHistory.is_demo,
            func.count(),
            func.coalesce(func.sum(ChatHistory.input_tokens), 0),
            func.coalesce(func.sum(ChatHistory.output_tokens), 0),
        )
        .join(Chatbot, Chatbot.id == ChatHistory.chatbot_id)
        .where(
            Chatbot.customer_id == customer_id,
            ChatHistory.timestamp >= since,
            ChatHistory.timestamp < until,
        )
        .group_by(ChatHistory.chatbot_id, day, ChatHistory.is_demo)
    ).all()
    chatbots = _chatbot_lines(session, customer_id)
    cells: dict[tuple[date, uuid.UUID], Cell] = {}
    for chatbot_id, on, is_demo, count, input_tokens, output_tokens in grouped:
        on = on if isinstance(on, date) else date.fromisoformat(str(on))
        cell = cells.setdefault((on, chatbot_id), Cell(on, chatbot_id, Counts()))
        if is_demo:
            cell.counts.demo_messages += int(count)
            cell.counts.demo_tokens += int(input_tokens) + int(output_tokens)
        else:
            cell.counts.questions += int(count)
            cell.counts.input_tokens += int(input_tokens)
            cell.counts.output_tokens += int(output_tokens)
    totals = Counts()
    days = {start + timedelta(days=i): Counts() for i in range((end - start).days + 1)}
    for cell in cells.values():
        totals.add(cell.counts)
        days[cell.day].add(cell.counts)
        chatbots[cell.chatbot_id].counts.add(cell.counts)
    return UsageReport(
        start=start,
        end=end,
        totals=totals,
        by_chatbot=sorted(chatbots.values(), key=lambda line: (line.name.lower(), line.chatbot_id)),
        by_day=sorted(days.items()),
        cells=sorted(cells.values(), key=lambda c: (c.day, chatbots[c.chatbot_id].name.lower())),
    )


def _chatbot_lines(session: Session, customer_id: uuid.UUID) -> dict[uuid.UUID, ChatbotLine]:
    month = month_of(utcnow())
    rows = session.execute(
        select(Chatbot.id, Chatbot.name, Chatbot.monthly_token_limit, ChatbotMonthlyUsage.tokens)
        .outerjoin(
            ChatbotMonthlyUsage,
            and_(ChatbotMonthlyUsage.chatbot_id == Chatbot.id, ChatbotMonthlyUsage.month == month),
        )
        .where(Chatbot.customer_id == customer_id)
    ).all()
    return {
        chatbot_id: ChatbotLine(chatbot_id, name, limit, int(tokens or 0))
        for chatbot_id, name, limit, tokens in rows
    }


CSV_COLUMNS = (
    "date",
    "chatbot_id",
    "chatbot_name",
    "questions",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "demo_messages",
    "demo_tokens",
)


def usage_csv(report: UsageReport) -> str:
    """One row per day and chatbot with any activity; the rows add up to the JSON totals."""
    names = {line.chatbot_id: line.name for line in report.by_chatbot}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_csv_rows(report.cells, names))
    return out.getvalue()


def _csv_rows(cells: Iterable[Cell], names: dict[uuid.UUID, str]) -> Iterable[list[object]]:
    for cell in cells:
        c = cell.counts
        yield [
            cell.day.isoformat(),
            str(cell.chatbot_id),
            _spreadsheet_safe(names.get(cell.chatbot_id, "")),
            c.questions,
            c.input_tokens,
            c.output_tokens,
            c.total_tokens,
            c.demo_messages,
            c.demo_tokens,
        ]


def _spreadsheet_safe(text: str) -> str:
    # A name starting with = + - @ would run as a formula in a spreadsheet (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

"""What the query tests check after each call: a chatbot's money state, read afresh, and a
raw HTTP client that can hang up at a chosen point."""

from __future__ import annotations

import json
import socket
import struct
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, select

from app.core.db import get_database
from app.models import ChatbotMonthlyUsage, ChatHistory, TokenReservation, UsageToken
from tests.factories import Tenant
from tests.waiting import eventually

T = TypeVar("T")
# The `bot` fixture: a tenant, its chatbot with one ready document, that document.
Bot = tuple[Tenant, dict[str, Any], dict[str, Any]]


@dataclass(frozen=True)
class Money:
    tokens_remaining: int
    tokens_used: int
    month: int  # the chatbot's spending counters (every month)
    history: int  # the chatbot's history rows
    reservations: int  # the chatbot's reservation rows


def money(customer_id: str, chatbot_id: str) -> Money:
    customer, chatbot = uuid.UUID(customer_id), uuid.UUID(chatbot_id)
    with get_database().session() as session:
        usage = session.scalars(select(UsageToken).where(UsageToken.customer_id == customer)).one()

        def count(model: Any) -> int:
            where = model.chatbot_id == chatbot
            return int(session.scalar(select(func.count()).select_from(model).where(where)) or 0)

        month = session.scalar(
            select(func.coalesce(func.sum(ChatbotMonthlyUsage.tokens), 0)).where(
                ChatbotMonthlyUsage.chatbot_id == chatbot
            )
        )
        return Money(
            tokens_remaining=usage.tokens_remaining,
            tokens_used=usage.tokens_used,
            month=int(month or 0),
            history=count(ChatHistory),
            reservations=count(TokenReservation),
        )


class RawRequest:
    """One HTTP/1.1 request on a socket the test holds: read up to a point, then hang up
    (a reset, as a closed browser tab) and wait until the server has seen it."""

    def __init__(self, server: Any, path: str, body: dict[str, Any], headers: dict[str, str]):
        self.server = server
        self.sock = socket.create_connection(("127.0.0.1", server.config.port), timeout=30)
        self.address = self.sock.getsockname()
        payload = json.dumps(body).encode()
        head = [
            f"POST {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        self.received = b""

    def read_until(self, marker: bytes, count: int = 1) -> bytes:
        while self.received.count(marker) < count:
            chunk = self.sock.recv(65536)
            assert chunk, f"the server closed the response before {marker!r}: {self.received!r}"
            self.received += chunk
        return self.received

    def hang_up(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        eventually(self._connected, lambda connected: not connected, "the server to see it")

    def _connected(self) -> bool:
        while True:
            try:
                connections = list(self.server.server_state.connections)
            except RuntimeError:  # the set changed while we copied it
                continue
            return any(getattr(c, "client", None) == self.address for c in connections)

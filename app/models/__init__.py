"""All ORM models, imported together so relationships and Alembic see every table."""

from app.models.base import Base
from app.models.billing import (
    Billing,
    BillingEvent,
    ChatbotMonthlyUsage,
    InvoiceCounter,
    InvoiceStatus,
    TokenCredit,
)
from app.models.chat_history import ChatHistory
from app.models.chatbot import Chatbot
from app.models.customer import Customer
from app.models.document import Document, DocumentStatus
from app.models.ledger import PendingDeletion, TokenReservation
from app.models.passage import Passage
from app.models.usage_token import UsageToken
from app.models.user import Role, User

__all__ = [
    "Base",
    "Billing",
    "BillingEvent",
    "ChatbotMonthlyUsage",
    "InvoiceCounter",
    "InvoiceStatus",
    "Passage",
    "PendingDeletion",
    "TokenCredit",
    "TokenReservation",
    "ChatHistory",
    "Chatbot",
    "Customer",
    "Document",
    "DocumentStatus",
    "Role",
    "UsageToken",
    "User",
]

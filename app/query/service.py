"""The query path's blocking steps (database, model, vector store), each run in a thread.

admit (who asks, may they) -> prepare (retrieve, build the prompt, reserve tokens or a demo
slot) -> the LLM (async, elsewhere) -> finish (settle tokens and write history in one
transaction) or abandon (give the reservation back).

Transactions. Unlike the other domains, the query path has no request-scoped session: an
answer streams for seconds, and a pooled connection held while waiting for the LLM would let a
few slow answers starve the pool. Each step opens its own short transaction through
`QueryTools.db` instead, and owns it:
- admission reads the chatbot (and commits nothing);
- `prepare` takes the reservation (the chatbot's month, then the balance, or a demo slot) in
  one transaction, after retrieval, so a refused question holds no lock while embedding;
- `finish` settles the real count and writes the history row in one transaction, so
  `tokens_used` always equals the history's sum; `abandon` gives the reservation back.
Exactly one of `finish`/`abandon` runs for every prepared question (see answering.py).

Everything a step uses comes in `QueryTools` (built from the process's clients by
`app/query/dependencies.py`), so tests and the CLI can call these functions without the app.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import date

from limits import parse
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.billing.service import (
    adjust_chatbot_month,
    month_of,
    release_tokens,
    reserve_chatbot_month,
    reserve_tokens,
    settle_tokens,
)
from app.chatbots.service import get_owned_chatbot
from app.core.config import Settings
from app.core.db import Database, paginate
from app.core.errors import (
    Conflict,
    DemoLimitReached,
    Forbidden,
    InsufficientTokens,
    InvalidApiKey,
    MonthlyLimitReached,
    NotFound,
    OriginNotAllowed,
    RateLimited,
)
from app.core.metrics import ANSWERS, TOKENS
from app.core.ratelimit import RateLimiter
from app.core.schemas import PageParams
from app.core.security import api_keys_match
from app.models import Chatbot, ChatHistory
from app.models.base import utcnow
from app.query.schemas import QUESTION_MAX_LENGTH, PublicChatbot
from app.rag.embeddings import Embedder
from app.rag.llm import LLMClient
from app.rag.prompting import Turn, build_messages, extractive_answer
from app.rag.vector_store import EmbeddingModelMismatch, Hit, VectorStore


class ReindexNeeded(Conflict):
    code = "embedding_model_mismatch"
    public_detail = (
        "This chatbot cannot answer until its owner reindexes its documents; try again later."
    )


@dataclass(frozen=True)
class QueryTools:
    """What answering a question uses: short transactions, the model, the store, the LLM."""

    settings: Settings
    db: Database
    embedder: Embedder
    store: VectorStore
    llm: LLMClient


@dataclass(frozen=True)
class Asker:
    """Who asks which chatbot, resolved before any work is done."""

    chatbot_id: uuid.UUID
    customer_id: uuid.UUID
    system_prompt: str | None
    temperature: float | None
    top_k: int
    allowed_origins: tuple[str, ...]
    monthly_token_limit: int | None = None
    api_key: str = field(default="", repr=False)
    user_id: uuid.UUID | None = None
    demo: bool = False


@dataclass
class Prepared:
    asker: Asker
    question: str
    session_id: str
    hits: list[Hit]
    mode: str
    messages: list[dict[str, str]]
    reserved: int
    estimated_input: int
    started: float
    month: date | None = None  # the calendar month the reservation was counted in
    answer: str = ""  # known in advance for the extractive and fallback modes
    demo_remaining: int | None = None
    message_id: uuid.UUID = field(default_factory=uuid.uuid4)


def _asker(chatbot: Chatbot, user_id: uuid.UUID | None = None, demo: bool = False) -> Asker:
    return Asker(
        chatbot_id=chatbot.id,
        customer_id=chatbot.customer_id,
        system_prompt=chatbot.system_prompt,
        temperature=chatbot.temperature,
        top_k=chatbot.top_k,
        allowed_origins=tuple(chatbot.allowed_origins or ()),
        monthly_token_limit=chatbot.monthly_token_limit,
        api_key=chatbot.api_key,
        user_id=user_id,
        demo=demo,
    )


# --- admission ---


def origin_allowed(allowed: tuple[str, ...] | list[str], origin: str | None) -> bool:
    """No Origin header (a server calling us) or an empty list: allowed."""
    if not origin or not allowed:
        return True
    return origin.strip().rstrip("/").lower() in allowed


def _public_chatbot(session: Session, chatbot_id: uuid.UUID) -> Chatbot:
    chatbot = session.get(Chatbot, chatbot_id)
    if chatbot is None:
        raise NotFound("Chatbot not found.")
    return chatbot


def load_public_chatbot(db: Database, chatbot_id: uuid.UUID) -> Asker:
    with db.session() as session:
        return _asker(_public_chatbot(session, chatbot_id))


def load_public_profile(db: Database, chatbot_id: uuid.UUID) -> tuple[Asker, PublicChatbot]:
    """The chatbot for the widget's first request: who may ask, and what it shows."""
    with db.session() as session:
        chatbot = _public_chatbot(session, chatbot_id)
        profile = PublicChatbot(
            chatbot_id=chatbot.id,
            name=chatbot.name,
            welcome_message=chatbot.welcome_message,
            question_max_length=QUESTION_MAX_LENGTH,
        )
        return _asker(chatbot), profile


def check_public(
    asker: Asker,
    limiter: RateLimiter,
    settings: Settings,
    api_key: str | None,
    origin: str | None,
    client_ip: str,
    *,
    reading: bool = False,
) -> None:
    """After the chatbot is found (404), in the contract's order: 401, 403, 429. `reading`:
    the widget's profile read, limited apart from questions."""
    chatbot_id = str(asker.chatbot_id)
    if not api_keys_match(api_key, asker.api_key):
        raise InvalidApiKey()
    if not origin_allowed(asker.allowed_origins, origin):
        raise OriginNotAllowed()
    limits = (
        [(settings.RATE_LIMIT_PUBLIC_READS, ("public-read", chatbot_id, client_ip))]
        if reading
        else [
            (settings.RATE_LIMIT_PUBLIC_PER_CLIENT, ("public-client", chatbot_id, client_ip)),
            (settings.RATE_LIMIT_PUBLIC_PER_CHATBOT, ("public-chatbot", chatbot_id)),
        ]
    )
    for limit, key in limits:
        decision = limiter.hit(parse(limit), *key)
        if not decision.allowed:
            raise RateLimited(
                "Too many questions in a short time; retry later.",
                retry_after=decision.retry_after,
            )


def admit_user(
    db: Database,
    user_id: uuid.UUID,
    token_customer_id: uuid.UUID,
    chatbot_id: uuid.UUID,
    *,
    path_customer_id: uuid.UUID | None = None,
    demo: bool = False,
) -> Asker:
    if path_customer_id is not None and path_customer_id != token_customer_id:
        raise Forbidden("This customer_id is not the one your token belongs to.")
    with db.session() as session:
        chatbot = get_owned_chatbot(session, token_customer_id, chatbot_id)
        return _asker(chatbot, user_id=user_id, demo=demo)


# --- preparation ---


def prepare(tools: QueryTools, asker: Asker, question: str, session_id: str) -> Prepared:
    started = time.perf_counter()
    settings, db = tools.settings, tools.db
    hits = retrieve(tools, asker, question)
    with db.session() as session:
        history = _recent_turns(session, asker.chatbot_id, session_id, settings.HISTORY_TURNS)
    if not hits:
        mode, messages, answer = "fallback", [], settings.FALLBACK_MESSAGE
    elif tools.llm.configured:
        mode, answer = "llm", ""
        messages = build_messages(asker.system_prompt, hits, history, question)
    else:
        mode, messages, answer = "extractive", [], extractive_answer(hits)
    estimated_input, reserve = _cost(tools, mode, messages, question, answer)
    prepared = Prepared(
        asker=asker,
        question=question,
        session_id=session_id,
        hits=hits,
        mode=mode,
        messages=messages,
        reserved=0,
        estimated_input=estimated_input,
        started=started,
        answer=answer,
    )
    with db.session() as session:
        if asker.demo:
            prepared.demo_remaining = take_demo_slot(session, asker.chatbot_id, settings)
        elif reserve > 0:
            # One transaction: the chatbot's month and the balance are both taken or neither.
            month = month_of(utcnow())
            limit = asker.monthly_token_limit
            if not reserve_chatbot_month(session, asker.chatbot_id, month, reserve, limit):
                raise MonthlyLimitReached(
                    f"This chatbot has spent its monthly_token_limit ({limit} tokens) for "
                    f"{month:%B %Y}; an admin can raise it, or it resets on the 1st (UTC)."
                )
            if not reserve_tokens(session, asker.customer_id, reserve):
                raise InsufficientTokens(
                    f"This question needs up to {reserve} tokens and the balance is lower; "
                    "buy a token pack to continue."
                )
            prepared.reserved, prepared.month = reserve, month
    return prepared


def retrieve(tools: QueryTools, asker: Asker, question: str) -> list[Hit]:
    embedder = tools.embedder
    vector = embedder.embed_query(question)
    try:
        hits = tools.store.query(asker.chatbot_id, embedder.model_name, vector, asker.top_k)
    except EmbeddingModelMismatch as exc:
        raise ReindexNeeded(
            f"This chatbot's documents were embedded with {exc.stored_model}, but the server "
            f"now uses {exc.current_model}; reindex it: POST /api/chatbots/{asker.chatbot_id}"
            "/reindex."
        ) from exc
    return [h for h in hits if h.score >= tools.settings.MIN_SCORE]


def _recent_turns(session: Session, chatbot_id: uuid.UUID, session_id: str, n: int) -> list[Turn]:
    if n <= 0:
        return []
    rows = session.execute(
        select(ChatHistory.question, ChatHistory.answer)
        .where(ChatHistory.chatbot_id == chatbot_id, ChatHistory.session_id == session_id)
        .order_by(ChatHistory.timestamp.desc())
        .limit(n)
    ).all()
    return [Turn(q, a) for q, a in reversed(rows)]


def count_tokens(embedder: Embedder, text: str) -> int:
    """Our count where the provider gives none: the embedding model's tokenizer, which is
    close to the LLM's for Latin and CJK text."""
    return embedder.token_length(text) if text else 0


def _cost(
    tools: QueryTools, mode: str, messages: list[dict[str, str]], question: str, answer: str
) -> tuple[int, int]:
    """(estimated input tokens, the reservation: an upper bound for the whole request)."""
    if mode == "fallback":
        return 0, 0
    if mode == "extractive":
        estimated = count_tokens(tools.embedder, question)
        return estimated, estimated + count_tokens(tools.embedder, answer)
    estimated = sum(count_tokens(tools.embedder, m["content"]) + 4 for m in messages)
    # A margin for the provider's tokenizer counting differently from ours.
    return estimated, math.ceil(estimated * 1.15) + 16 + tools.settings.LLM_MAX_TOKENS


def take_demo_slot(session: Session, chatbot_id: uuid.UUID, settings: Settings) -> int:
    count = session.scalar(
        update(Chatbot)
        .where(Chatbot.id == chatbot_id, Chatbot.demo_message_count < settings.DEMO_MESSAGE_LIMIT)
        .values(demo_message_count=Chatbot.demo_message_count + 1)
        .returning(Chatbot.demo_message_count)
    )
    if count is None:
        raise DemoLimitReached(
            f"This chatbot has used its {settings.DEMO_MESSAGE_LIMIT} free demo messages; "
            "use the query endpoints (tokens are charged) instead.",
            retry_after=3600,
        )
    return settings.DEMO_MESSAGE_LIMIT - int(count)


# --- settlement ---


def finish(
    db: Database,
    prepared: Prepared,
    answer: str,
    input_tokens: int,
    output_tokens: int,
    *,
    interrupted: bool = False,
) -> None:
    """Charge the real tokens and write the history row, in one transaction."""
    asker = prepared.asker
    demo = "true" if asker.demo else "false"
    ANSWERS.labels(prepared.mode, "interrupted" if interrupted else "ok").inc()
    TOKENS.labels("input", demo).inc(input_tokens)
    TOKENS.labels("output", demo).inc(output_tokens)
    with db.session() as session:
        if not asker.demo and (prepared.reserved or input_tokens or output_tokens):
            # Rows are locked in one order everywhere (the chatbot's month, then the
            # balance), so concurrent questions wait for each other instead of deadlocking.
            used = input_tokens + output_tokens
            if prepared.month is None:  # nothing was reserved (e.g. counted afterwards)
                reserve_chatbot_month(session, asker.chatbot_id, month_of(utcnow()), used, None)
            else:
                adjust_chatbot_month(
                    session, asker.chatbot_id, prepared.month, used - prepared.reserved
                )
            settle_tokens(
                session, asker.customer_id, prepared.reserved, input_tokens, output_tokens
            )
        session.add(
            ChatHistory(
                id=prepared.message_id,
                chatbot_id=asker.chatbot_id,
                user_id=asker.user_id,
                session_id=prepared.session_id,
                question=prepared.question,
                answer=answer,
                sources=[source_dict(h) for h in prepared.hits],
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                latency_ms=int((time.perf_counter() - prepared.started) * 1000),
                mode=prepared.mode,
                is_demo=asker.demo,
                interrupted=interrupted,
            )
        )


def abandon(db: Database, prepared: Prepared) -> None:
    """The answer failed: give back the reservation (or the demo slot); nothing is charged."""
    asker = prepared.asker
    ANSWERS.labels(prepared.mode, "failed").inc()
    with db.session() as session:
        if asker.demo:
            session.execute(
                update(Chatbot)
                .where(Chatbot.id == asker.chatbot_id, Chatbot.demo_message_count > 0)
                .values(demo_message_count=Chatbot.demo_message_count - 1)
            )
        elif prepared.reserved:
            if prepared.month is not None:  # the same lock order as finish
                adjust_chatbot_month(session, asker.chatbot_id, prepared.month, -prepared.reserved)
            release_tokens(session, asker.customer_id, prepared.reserved)


def source_dict(hit: Hit) -> dict[str, object]:
    page = hit.metadata.get("page")
    return {
        "document_id": str(hit.metadata.get("document_id", "")),
        "filename": str(hit.metadata.get("filename", "")),
        "chunk_index": int(hit.metadata.get("chunk_index", 0)),
        "page": int(page) if page is not None else None,
        "score": round(hit.score, 4),
        "text": hit.text,
    }


def list_history(
    session: Session, chatbot_id: uuid.UUID, page: PageParams, session_id: str | None
) -> tuple[list[ChatHistory], int]:
    scope = select(ChatHistory).where(ChatHistory.chatbot_id == chatbot_id)
    if session_id is not None:
        scope = scope.where(ChatHistory.session_id == session_id)
    return paginate(session, scope, page, ChatHistory.timestamp.desc(), ChatHistory.id)

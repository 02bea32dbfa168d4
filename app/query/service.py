"""The query path's blocking steps (database, model, vector store), each run in a thread.

admit (who asks, may they) -> prepare (retrieve, build the prompt, reserve tokens or a demo
slot) -> the LLM (async, elsewhere) -> finish (settle tokens and write history in one
transaction) or abandon (give the reservation back).

Transactions. Unlike the other domains, the query path has no request-scoped session: an
answer streams for seconds, and a pooled connection held while waiting for the LLM would let a
few slow answers starve the pool. Each step opens its own short transaction through
`QueryTools.db` instead, and owns it:
- admission reads the chatbot (and, on the JWT routes, the token's user) in one statement
  without a transaction (`Database.statement`); it runs in the same worker thread as
  `prepare`, before it;
- `prepare` embeds and searches with no transaction open, then in one short transaction
  reads the retrieved documents' status and the session's recent turns and takes the
  reservation (the chatbot's month; then the chatbot's concurrency, the balance, and a
  `TokenReservation` row, one statement on PostgreSQL; or a demo slot of the chatbot and of
  the customer), so a refused question holds no lock while embedding and the rows are locked
  only from the reservation to the commit;
- `finish` settles the real count and writes the history row in one transaction (on
  PostgreSQL one statement, `app.billing.service.settle_answer`), so `tokens_used` always
  equals the history's sum; `abandon` gives the reservation back. Both delete the reservation
  row, and only what the deleted row held is given back, so a reservation the sweep
  (`app.billing.service.sweep_reservations`) already returned is never returned twice.
Exactly one of `finish`/`abandon` runs for every prepared question (see answering.py); the
sweep is the backstop for a process that died in between.

Everything a step uses comes in `QueryTools` (built from the process's clients by
`app/query/dependencies.py`), so tests and the CLI can call these functions without the app.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import date

from limits import parse
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.auth.service import check_token_user
from app.billing.service import (
    adjust_chatbot_month,
    month_of,
    release_tokens,
    reserve_chatbot_month,
    settle_answer,
    settle_tokens,
    take_answer_slot,
    take_reservation,
)
from app.core.config import Settings
from app.core.db import Database, paginate
from app.core.errors import (
    ChatbotBusy,
    Conflict,
    DemoLimitReached,
    Forbidden,
    InsufficientTokens,
    InvalidApiKey,
    MonthlyLimitReached,
    NotFound,
    OriginNotAllowed,
    QuestionTooLong,
    RateLimited,
)
from app.core.metrics import ANSWERS, QUERY_SECONDS, TOKENS, observe_since
from app.core.ratelimit import RateLimiter
from app.core.schemas import PageParams
from app.core.security import TokenClaims, api_keys_match
from app.documents.passages import ready_documents
from app.models import Chatbot, ChatHistory, Customer, User
from app.models.base import utcnow
from app.query.retrieval import dense_depth, document_of, find_passages
from app.query.schemas import PublicChatbot
from app.rag.batching import QueryEmbedder
from app.rag.embeddings import TOKEN_CACHE_MAX_CHARS, Embedder
from app.rag.llm import LLMClient
from app.rag.prompting import Turn, build_messages, extractive_answer
from app.rag.vector_store import EmbeddingModelMismatch, Hit, VectorStore

# A busy chatbot's visitors are told to come back after this many seconds.
BUSY_RETRY_SECONDS = 5


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
    questions: QueryEmbedder
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
    retrieval_mode: str | None = None  # None: RETRIEVAL_MODE
    language: str | None = None


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
        retrieval_mode=chatbot.retrieval_mode,
        language=chatbot.language,
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
    with db.statement() as session:
        return _asker(_public_chatbot(session, chatbot_id))


def load_public_profile(
    db: Database, settings: Settings, chatbot_id: uuid.UUID
) -> tuple[Asker, PublicChatbot]:
    """The chatbot for the widget's first request: who may ask, and what it shows."""
    with db.statement() as session:
        chatbot = _public_chatbot(session, chatbot_id)
        profile = PublicChatbot(
            chatbot_id=chatbot.id,
            name=chatbot.name,
            welcome_message=chatbot.welcome_message,
            question_max_length=settings.QUESTION_MAX_CHARS,
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
    session_id: str | None = None,
) -> None:
    """After the chatbot is found (404), in the contract's order: 401, 403, 429. `reading`:
    the widget's profile read, limited apart from questions. A question with a `session_id`
    also counts against that conversation's daily limit."""
    chatbot_id = str(asker.chatbot_id)
    if not api_keys_match(api_key, asker.api_key):
        raise InvalidApiKey()
    if not origin_allowed(asker.allowed_origins, origin):
        raise OriginNotAllowed()
    limits: list[tuple[str, tuple[str, ...], str]] = []
    if reading:
        limits.append(
            (settings.RATE_LIMIT_PUBLIC_READS, ("public-read", chatbot_id, client_ip), "requests")
        )
    else:
        # The narrowest first: a refused conversation does not use up the shared counters.
        if session_id:
            limits.append(
                (
                    settings.RATE_LIMIT_PUBLIC_PER_SESSION,
                    ("public-session", chatbot_id, session_id),
                    "questions in this conversation",
                )
            )
        limits += [
            (
                settings.RATE_LIMIT_PUBLIC_PER_CLIENT,
                ("public-client", chatbot_id, client_ip),
                "questions in a short time",
            ),
            (settings.RATE_LIMIT_PUBLIC_PER_CHATBOT, ("public-chatbot", chatbot_id), "questions"),
        ]
    for limit, key, what in limits:
        decision = limiter.hit(parse(limit), *key)
        if not decision.allowed:
            raise RateLimited(f"Too many {what}; retry later.", retry_after=decision.retry_after)


def admit_user(
    db: Database,
    claims: TokenClaims,
    chatbot_id: uuid.UUID,
    *,
    path_customer_id: uuid.UUID | None = None,
    demo: bool = False,
) -> Asker:
    """The JWT routes' admission in one read: the token's user (it may have been deleted
    since the token was signed), then its customer's chatbot."""
    if path_customer_id is not None and path_customer_id != claims.customer_id:
        raise Forbidden("This customer_id is not the one your token belongs to.")
    with db.statement() as session:
        # One read: the user (`user_for_claims`) and its customer's chatbot
        # (`get_owned_chatbot`), which is None when there is no such chatbot.
        row = session.execute(
            select(User.customer_id, Chatbot)
            .outerjoin(
                Chatbot, (Chatbot.id == chatbot_id) & (Chatbot.customer_id == User.customer_id)
            )
            .where(User.id == claims.user_id)
        ).first()
        customer_id, chatbot = row._tuple() if row is not None else (None, None)
        check_token_user(claims, customer_id)
        if chatbot is None:
            raise NotFound("Chatbot not found.")
        return _asker(chatbot, user_id=claims.user_id, demo=demo)


# --- preparation ---


def check_question(settings: Settings, question: str) -> None:
    """The request schema caps a question at 10,000 characters; QUESTION_MAX_CHARS (at
    most that) is the limit a deployment chose."""
    if len(question) > settings.QUESTION_MAX_CHARS:
        raise QuestionTooLong(
            f"question: at most {settings.QUESTION_MAX_CHARS} characters are accepted; this "
            f"one has {len(question)}.",
            loc=("body", "question"),
        )


def prepare(
    tools: QueryTools,
    admit: Callable[[], Asker],
    question: str,
    session_id: str,
    new_session: bool = False,
) -> Prepared:
    """`admit()` (its own short transaction), then the dense retrieval (no transaction open
    while embedding), then one transaction that runs the lexical search, reads what the
    prompt needs and takes the reservation (or the demo slot). `new_session`: the session id
    was made for this question, so it has no earlier turns to read."""
    asker = admit()
    started = time.perf_counter()
    settings = tools.settings
    check_question(settings, question)
    mode = asker.retrieval_mode or settings.RETRIEVAL_MODE
    depth = dense_depth(settings, mode, asker.top_k)
    dense_hits = _dense_hits(tools, asker, question, depth) if depth else []
    with tools.db.session() as session:
        hits, ready = find_passages(
            settings,
            session,
            dense_hits,
            asker.chatbot_id,
            asker.language,
            mode,
            question,
            asker.top_k,
        )
        return _prepared(
            tools, session, asker, question, session_id, new_session, hits, ready, started
        )


def _prepared(
    tools: QueryTools,
    session: Session,
    asker: Asker,
    question: str,
    session_id: str,
    new_session: bool,
    hits: list[Hit],
    ready: set[uuid.UUID],
    started: float,
) -> Prepared:
    settings = tools.settings
    hits = citable(session, asker.chatbot_id, hits, ready)
    history = (
        []
        if new_session
        else _recent_turns(
            session,
            asker.chatbot_id,
            session_id,
            settings.HISTORY_TURNS,
            settings.HISTORY_MAX_CHARS,
        )
    )
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
    # The reads above take no lock: the rows below are locked only from here to the commit.
    if asker.demo:
        prepared.demo_remaining = take_demo_slot(
            session, asker.chatbot_id, asker.customer_id, settings
        )
    elif reserve > 0:
        prepared.month = reserve_answer(session, settings, asker, prepared.message_id, reserve)
        prepared.reserved = reserve
    if mode != "llm":  # the answer is known now: its first token is ready
        observe_since("first_token", started)
    return prepared


def reserve_answer(
    session: Session, settings: Settings, asker: Asker, reservation_id: uuid.UUID, tokens: int
) -> date:
    """Take `tokens` for one answer, in the caller's transaction: the chatbot's month, a
    place among its answers in progress, the balance, and the reservation row; all or none.
    Returns the month the tokens were counted in."""
    month = month_of(utcnow())
    limit = asker.monthly_token_limit
    if not reserve_chatbot_month(session, asker.chatbot_id, month, tokens, limit):
        raise MonthlyLimitReached(
            f"This chatbot has spent its monthly_token_limit ({limit} tokens) for "
            f"{month:%B %Y}; an admin can raise it, or it resets on the 1st (UTC)."
        )
    # The upsert above holds this chatbot's month row until commit, so its reservers pass
    # here one at a time (in every API process) and the count is exact.
    busy, taken = take_answer_slot(
        session,
        reservation_id,
        asker.customer_id,
        asker.chatbot_id,
        month,
        tokens,
        ttl_seconds=settings.RESERVATION_TTL_SECONDS,
        max_in_progress=settings.MAX_CONCURRENT_ANSWERS_PER_CHATBOT,
    )
    if busy >= settings.MAX_CONCURRENT_ANSWERS_PER_CHATBOT:
        raise ChatbotBusy(
            f"This chatbot is already answering {busy} questions, its limit "
            "(MAX_CONCURRENT_ANSWERS_PER_CHATBOT); retry in a few seconds.",
            retry_after=BUSY_RETRY_SECONDS,
        )
    if not taken:
        raise InsufficientTokens(
            f"This question needs up to {tokens} tokens and the balance is lower; "
            "buy a token pack to continue."
        )
    return month


def _dense_hits(tools: QueryTools, asker: Asker, question: str, k: int) -> list[Hit]:
    embedder = tools.embedder
    with QUERY_SECONDS.labels("embed").time():
        vector = tools.questions.embed(question)
    try:
        with QUERY_SECONDS.labels("search").time():
            hits = tools.store.query(asker.chatbot_id, embedder.model_name, vector, k)
    except EmbeddingModelMismatch as exc:
        raise ReindexNeeded(
            f"This chatbot's documents were embedded with {exc.stored_model}, but the server "
            f"now uses {exc.current_model}; reindex it: POST /api/chatbots/{asker.chatbot_id}"
            "/reindex."
        ) from exc
    return [h for h in hits if h.score >= tools.settings.MIN_SCORE]


def citable(
    session: Session,
    chatbot_id: uuid.UUID,
    hits: list[Hit],
    known_ready: Collection[uuid.UUID] = (),
) -> list[Hit]:
    """Only passages of this chatbot's documents that exist and are `ready`: vectors a
    deletion left behind (the store was down) or a failed ingestion wrote are never cited.
    Documents in `known_ready` (read in this transaction) are not asked about again; the
    others in one query by primary key."""
    ids = {doc_id for doc_id in map(document_of, hits) if doc_id is not None}
    ready = ids & set(known_ready)
    ready |= ready_documents(session, chatbot_id, ids - ready)
    return [hit for hit in hits if document_of(hit) in ready]


def _recent_turns(
    session: Session, chatbot_id: uuid.UUID, session_id: str, n: int, max_chars: int
) -> list[Turn]:
    """The session's last `n` turns within `max_chars` (HISTORY_MAX_CHARS: HISTORY_TURNS
    alone would let a few long turns blow up the prompt and the reservation); the newest are
    kept, and one that does not fit whole is cut."""
    if n <= 0:
        return []
    rows = session.execute(
        select(ChatHistory.question, ChatHistory.answer)
        .where(ChatHistory.chatbot_id == chatbot_id, ChatHistory.session_id == session_id)
        .order_by(ChatHistory.timestamp.desc())
        .limit(n)
    ).all()
    return fit_history([Turn(q, a) for q, a in reversed(rows)], max_chars)


def fit_history(turns: list[Turn], budget: int) -> list[Turn]:
    """The newest turns whose questions and answers fit in `budget` characters together,
    oldest first. When even the newest does not fit, it is cut to fit (a follow-up needs
    it most)."""
    kept: list[Turn] = []
    for turn in reversed(turns):
        size = len(turn.question) + len(turn.answer)
        if size > budget:
            if not kept and budget > 0:
                question = _clip(turn.question, max(budget // 2, budget - len(turn.answer)))
                kept.append(Turn(question, _clip(turn.answer, budget - len(question))))
            break
        kept.append(turn)
        budget -= size
    return kept[::-1]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def count_tokens(embedder: Embedder, text: str) -> int:
    """Our count where the provider gives none: the embedding model's tokenizer, which is
    close to the LLM's for Latin and CJK text.

    A prompt is counted paragraph by paragraph: its passages come back question after
    question and the tokenizer remembers short texts, so only new paragraphs are tokenised
    (2.7 ms per prompt otherwise). Paragraphs meet at whitespace, which the tokenizers split
    at anyway: the same count (exactly so for WordPiece models such as MiniLM)."""
    if not text:
        return 0
    if len(text) <= TOKEN_CACHE_MAX_CHARS:
        return embedder.token_length(text)
    return sum(embedder.token_length(part) for part in text.split("\n\n") if part)


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


def take_demo_slot(
    session: Session, chatbot_id: uuid.UUID, customer_id: uuid.UUID, settings: Settings
) -> int:
    """One demo message of the chatbot's DEMO_MESSAGE_LIMIT and of the customer's
    DEMO_MESSAGES_PER_CUSTOMER (which deleting a chatbot does not give back), each one
    guarded UPDATE, in the caller's transaction. Returns how many are left (the smaller)."""
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
    allowance = settings.DEMO_MESSAGES_PER_CUSTOMER
    used = session.scalar(
        update(Customer)
        .where(Customer.id == customer_id, Customer.demo_messages_used < allowance)
        .values(demo_messages_used=Customer.demo_messages_used + 1)
        .returning(Customer.demo_messages_used)
    )
    if used is None:
        raise DemoLimitReached(
            f"Your account has used its {allowance} free demo messages (all chatbots "
            "together, deleted ones included); use the query endpoints (tokens are charged) "
            "instead.",
            retry_after=3600,
        )
    return min(settings.DEMO_MESSAGE_LIMIT - int(count), allowance - int(used))


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
    observe_since("total", prepared.started)
    history = {
        "id": prepared.message_id,
        "chatbot_id": asker.chatbot_id,
        "user_id": asker.user_id,
        "session_id": prepared.session_id,
        "question": prepared.question,
        "answer": answer,
        "sources": [source_dict(h) for h in prepared.hits],
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "latency_ms": int((time.perf_counter() - prepared.started) * 1000),
        "mode": prepared.mode,
        "is_demo": asker.demo,
        "interrupted": interrupted,
        "timestamp": utcnow(),
    }
    if asker.demo:  # nothing to settle: one INSERT
        with db.statement() as session:
            session.add(ChatHistory(**history))
        return
    if db.postgres:  # the steps below, in one statement
        with db.statement() as session:
            settle_answer(
                session,
                prepared.message_id if prepared.reserved else None,
                asker.customer_id,
                asker.chatbot_id,
                prepared.month or month_of(utcnow()),
                input_tokens,
                output_tokens,
                history,
            )
        return
    with db.session() as session:
        # Rows are locked in one order everywhere (the reservation, the chatbot's month, the
        # balance), so concurrent questions wait for each other instead of deadlocking. What
        # the deleted row held is what is given back: 0 when the sweep already returned it.
        reserved = take_reservation(session, prepared.message_id) if prepared.reserved else 0
        used = input_tokens + output_tokens
        if reserved and prepared.month is not None:
            adjust_chatbot_month(session, asker.chatbot_id, prepared.month, used - reserved)
        elif used:  # nothing (left) reserved: count it now
            month = prepared.month or month_of(utcnow())
            reserve_chatbot_month(session, asker.chatbot_id, month, used, None)
        if reserved or used:
            settle_tokens(session, asker.customer_id, reserved, input_tokens, output_tokens)
        session.add(ChatHistory(**history))


def abandon(db: Database, prepared: Prepared) -> None:
    """The answer failed or its client left: give back the reservation (or the demo slots);
    nothing is charged, nothing is written."""
    asker = prepared.asker
    ANSWERS.labels(prepared.mode, "failed").inc()
    with db.session() as session:
        if asker.demo:
            session.execute(
                update(Chatbot)
                .where(Chatbot.id == asker.chatbot_id, Chatbot.demo_message_count > 0)
                .values(demo_message_count=Chatbot.demo_message_count - 1)
            )
            session.execute(
                update(Customer)
                .where(Customer.id == asker.customer_id, Customer.demo_messages_used > 0)
                .values(demo_messages_used=Customer.demo_messages_used - 1)
            )
        elif prepared.reserved:
            reserved = take_reservation(session, prepared.message_id)  # the same lock order
            if reserved and prepared.month is not None:
                adjust_chatbot_month(session, asker.chatbot_id, prepared.month, -reserved)
            if reserved:
                release_tokens(session, asker.customer_id, reserved)


def source_dict(hit: Hit) -> dict[str, object]:
    page = hit.metadata.get("page")
    return {
        "document_id": str(hit.metadata.get("document_id", "")),
        "filename": str(hit.metadata.get("filename", "")),
        "chunk_index": int(hit.metadata.get("chunk_index", 0)),
        "page": int(page) if page is not None else None,
        "heading": str(hit.metadata["heading"]) if hit.metadata.get("heading") else None,
        "score": round(hit.score, 4),
        "retrievers": list(hit.retrievers),
        "text": hit.text,
    }


def list_history(
    session: Session, chatbot_id: uuid.UUID, page: PageParams, session_id: str | None
) -> tuple[list[ChatHistory], int]:
    scope = select(ChatHistory).where(ChatHistory.chatbot_id == chatbot_id)
    if session_id is not None:
        scope = scope.where(ChatHistory.session_id == session_id)
    return paginate(session, scope, page, ChatHistory.timestamp.desc(), ChatHistory.id)

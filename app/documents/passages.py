"""The lexical index: every chunk's text in `passages`, searched with the database's own
full-text engine (PostgreSQL `tsvector` + GIN, SQLite FTS5 with `bm25()`).

Written by the ingest worker in the step that stores a document's vectors, removed with the
document (foreign key, ON DELETE CASCADE; on SQLite the FTS5 triggers follow), emptied for a
chatbot by reindex and rebuilt as its documents are processed again. Every search is scoped
to one chatbot and to its `ready` documents.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Text, cast, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import REGCONFIG, TSQUERY
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.core.db import Database
from app.models import Chatbot, Document, DocumentStatus, Passage
from app.rag.vector_store import Hit

# PostgreSQL's built-in text-search configurations (stemming and stop words per language);
# "simple" only lower-cases, the fallback for a chatbot without a language.
LANGUAGES = (
    "simple",
    "arabic",
    "armenian",
    "basque",
    "catalan",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hindi",
    "hungarian",
    "indonesian",
    "irish",
    "italian",
    "lithuanian",
    "nepali",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "serbian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
    "yiddish",
)
DEFAULT_LANGUAGE = "simple"
# A question's words that reach the index: enough for any real question, bounded for a
# hostile one.
MAX_QUERY_TERMS = 64
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class PassageText:
    chunk_index: int
    page: int | None
    text: str


def replace_passages(
    session: Session,
    chatbot_id: uuid.UUID,
    document_id: uuid.UUID,
    passages: Sequence[PassageText],
) -> None:
    """The document's passages, replacing what an earlier attempt wrote."""
    session.execute(delete(Passage).where(Passage.document_id == document_id))
    if not passages:
        return
    session.execute(
        insert(Passage),
        [
            {
                "chatbot_id": chatbot_id,
                "document_id": document_id,
                "chunk_index": p.chunk_index,
                "page": p.page,
                "text": p.text,
            }
            for p in passages
        ],
    )
    if _postgres(session):
        language = session.scalar(select(Chatbot.language).where(Chatbot.id == chatbot_id))
        session.execute(
            update(Passage)
            .where(Passage.document_id == document_id)
            .values(tsv=func.to_tsvector(_regconfig(language), Passage.text))
        )


def delete_chatbot_passages(session: Session, chatbot_id: uuid.UUID) -> None:
    session.execute(delete(Passage).where(Passage.chatbot_id == chatbot_id))


def relanguage(session: Session, chatbot_id: uuid.UUID, language: str | None) -> None:
    """Index the chatbot's passages again in its new language (PostgreSQL; SQLite's FTS5
    tokenizer does not depend on it)."""
    if _postgres(session):
        session.execute(
            update(Passage)
            .where(Passage.chatbot_id == chatbot_id)
            .values(tsv=func.to_tsvector(_regconfig(language), Passage.text))
        )


def count_passages(session: Session, chatbot_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Passage).where(Passage.chatbot_id == chatbot_id)
        )
        or 0
    )


def search(
    session: Session, chatbot_id: uuid.UUID, question: str, language: str | None, limit: int
) -> list[Hit]:
    """The chatbot's passages that share words with the question, best first (any word
    matches: a question is not a boolean query)."""
    terms = list(dict.fromkeys(w.lower() for w in _WORD.findall(question)))[:MAX_QUERY_TERMS]
    if not terms or limit <= 0:
        return []
    if _postgres(session):
        rows = _search_postgres(session, chatbot_id, " ".join(terms), language, limit)
    else:
        rows = _search_sqlite(session.connection(), chatbot_id, terms, limit)
    return [
        Hit(
            id=f"{document_id}:{chunk_index}",
            text=body,
            score=float(rank),
            metadata={
                "document_id": str(document_id),
                "chatbot_id": str(chatbot_id),
                "filename": filename,
                "chunk_index": int(chunk_index),
                **({"page": int(page)} if page is not None else {}),
            },
            retrievers=("lexical",),
        )
        for document_id, chunk_index, page, body, filename, rank in rows
    ]


def _search_postgres(
    session: Session, chatbot_id: uuid.UUID, words: str, language: str | None, limit: int
) -> list[tuple[uuid.UUID, int, int | None, str, str, float]]:
    config = _regconfig(language)
    # plainto_tsquery stems and drops stop words, then joins with AND; its output's " & "
    # become " | " so that any of the words matches (its lexemes come out quoted).
    query = cast(
        func.replace(cast(func.plainto_tsquery(config, words), Text), " & ", " | "), TSQUERY
    )
    rank = func.ts_rank(Passage.tsv, query, 1).label("rank")  # 1: / (1 + log(length))
    statement = (
        select(
            Passage.document_id,
            Passage.chunk_index,
            Passage.page,
            Passage.text,
            Document.filename,
            rank,
        )
        .join(Document, Document.id == Passage.document_id)
        .where(
            Passage.chatbot_id == chatbot_id,
            Document.status == DocumentStatus.ready,
            Passage.tsv.op("@@")(query),
        )
        .order_by(rank.desc(), Passage.id)
        .limit(limit)
    )
    return [tuple(row) for row in session.execute(statement)]


_SQLITE_SEARCH = text(
    "SELECT p.document_id, p.chunk_index, p.page, p.text, d.filename, "
    "-bm25(passages_fts, 1.0, 0.0) AS rank "
    "FROM passages_fts JOIN passages p ON p.id = passages_fts.rowid "
    "JOIN documents d ON d.id = p.document_id "
    "WHERE passages_fts MATCH :match AND p.chatbot_id = :chatbot AND d.status = :ready "
    "ORDER BY bm25(passages_fts, 1.0, 0.0), p.id LIMIT :limit"
)


def _search_sqlite(
    connection: Connection, chatbot_id: uuid.UUID, terms: list[str], limit: int
) -> list[tuple[uuid.UUID, int, int | None, str, str, float]]:
    # Each term quoted (a \w+ word holds no quote), OR-ed, inside the chatbot's own rows:
    # the chatbot id is a column of the FTS table, so other tenants' rows are never scored.
    words = " OR ".join(f'"{t}"' for t in terms)
    match = f'chatbot_id : "{chatbot_id.hex}" AND text : ({words})'
    rows = connection.execute(
        _SQLITE_SEARCH,
        {
            "match": match,
            "chatbot": chatbot_id.hex,
            "ready": DocumentStatus.ready.value,
            "limit": limit,
        },
    )
    return [(uuid.UUID(str(d)), int(i), p, str(t), str(f), float(r)) for d, i, p, t, f, r in rows]


def lexical_index_problem(db: Database) -> str | None:
    """Why the lexical index cannot work on this database (an SQLite built without FTS5), or
    None."""
    if db.engine.dialect.name != "sqlite":
        return None
    with db.engine.connect() as connection:
        compiled = connection.exec_driver_sql(
            "SELECT sqlite_compileoption_used('ENABLE_FTS5')"
        ).scalar()
    if compiled:
        return None
    return "this SQLite has no FTS5 (full-text search); use an SQLite built with it, or PostgreSQL"


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _regconfig(language: str | None) -> object:
    return cast(language if language in LANGUAGES else DEFAULT_LANGUAGE, REGCONFIG)

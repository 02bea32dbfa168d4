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
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import cast, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.core.db import Database
from app.documents.stopwords import STOP_WORDS
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
# Exact terms: at most this many per question are looked up.
MAX_EXACT_TERMS = 4
# A word, or words joined by - . / : as in codes and numbers ("E-7731", "4.2.1"): kept whole,
# so the engine splits it as it split the document (PostgreSQL reads "-7731" as a number).
_TOKEN = re.compile(r"\w+(?:[-./:]\w+)*")


@dataclass(frozen=True)
class PassageText:
    chunk_index: int
    page: int | None
    text: str
    heading: str = ""


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
                "heading": p.heading or None,
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


def question_terms(question: str) -> list[str]:
    """The question's words for the index, lower-cased, without stop words (all of them when
    the question has nothing else)."""
    words = [w.lower() for w in _TOKEN.findall(question)]
    kept = [w for w in words if w not in STOP_WORDS] or words
    return list(dict.fromkeys(kept))[:MAX_QUERY_TERMS]


def exact_terms(question: str) -> list[str]:
    """Words of the question that look copied from a document: with a digit ("E1234",
    "4711"), in capitals ("SKU", "MWK"), or capitalised after the first word ("Toronto")."""
    terms: list[str] = []
    for position, word in enumerate(_TOKEN.findall(question)):
        if word.lower() in STOP_WORDS or len(word) < 2:
            continue
        if (
            any(c.isdigit() for c in word)
            or (word.isupper() and any(c.isalpha() for c in word))
            or (position > 0 and word[0].isupper() and len(word) >= 3)
        ):
            terms.append(word.lower())
    return list(dict.fromkeys(terms))[:MAX_EXACT_TERMS]


def exact_matches(
    session: Session,
    chatbot_id: uuid.UUID,
    question: str,
    language: str | None,
    max_passages: int = 3,
) -> list[Hit]:
    """The passages holding an exact term of the question that few passages hold (at most
    ``max_passages``): the product code, error number or name the visitor typed, which
    a ranking of all the question's words can bury. Passages holding more such terms first.
    One statement for all the terms."""
    terms = exact_terms(question)
    if not terms or max_passages <= 0:
        return []
    postgres = _postgres(session)
    statement = text(
        " UNION ALL ".join(
            (_EXACT_POSTGRES if postgres else _EXACT_SQLITE).format(n=n) for n in range(len(terms))
        )
    )
    values: dict[str, object] = {
        "chatbot": chatbot_id if postgres else chatbot_id.hex,
        "ready": DocumentStatus.ready.value,
        "cap": max_passages + 1,
        "config": language if language in LANGUAGES else DEFAULT_LANGUAGE,
    }
    for n, term in enumerate(terms):
        # SQLite: the term as a phrase (a token holds no quote), inside the chatbot's rows.
        values[f"term{n}"] = (
            term if postgres else f'chatbot_id : "{chatbot_id.hex}" AND text : "{term}"'
        )
    return _exact_hits(chatbot_id, session.execute(statement, values), max_passages)


def _exact_hits(chatbot_id: uuid.UUID, rows: Iterable[Any], max_passages: int) -> list[Hit]:
    """Rows (term number, document_id, chunk_index, page, text, heading, filename) to the
    passages of the terms that at most `max_passages` passages hold, those holding more such
    terms first, then in document order."""
    by_term: dict[int, list[Hit]] = {}
    for number, document_id, chunk_index, page, body, heading, filename, *_ in rows:
        by_term.setdefault(int(number), []).append(
            _hit(
                chatbot_id,
                uuid.UUID(str(document_id)),
                chunk_index,
                page,
                body,
                heading,
                filename,
                0.0,
            )
        )
    found: dict[str, Hit] = {}
    terms_held: dict[str, int] = {}
    for number in sorted(by_term):
        hits = by_term[number]
        if len(hits) > max_passages:
            continue
        for hit in hits:
            found.setdefault(hit.id, hit)
            terms_held[hit.id] = terms_held.get(hit.id, 0) + 1
    order = sorted(
        found,
        key=lambda i: (
            -terms_held[i],
            found[i].metadata["document_id"],
            found[i].metadata["chunk_index"],
        ),
    )
    return [found[i] for i in order]


_EXACT_COLUMNS = "p.document_id, p.chunk_index, p.page, p.text, p.heading, d.filename"
_EXACT_POSTGRES = (
    "(SELECT {n} AS term, " + _EXACT_COLUMNS + " FROM passages AS p "
    "JOIN documents AS d ON d.id = p.document_id "
    "WHERE p.chatbot_id = :chatbot AND d.status = :ready "
    "AND p.tsv @@ plainto_tsquery(CAST(:config AS regconfig), :term{n}) LIMIT :cap)"
)
_EXACT_SQLITE = (
    # CROSS JOIN: SQLite's hint to loop over the full-text matches first; otherwise it may
    # walk the chatbot's passages and run the MATCH once per row.
    "SELECT * FROM (SELECT {n} AS term, " + _EXACT_COLUMNS + " FROM passages_fts "
    "CROSS JOIN passages AS p ON p.id = passages_fts.rowid "
    "CROSS JOIN documents AS d ON d.id = p.document_id "
    "WHERE passages_fts MATCH :term{n} AND p.chatbot_id = :chatbot AND d.status = :ready "
    "LIMIT :cap)"
)


def search(
    session: Session, chatbot_id: uuid.UUID, question: str, language: str | None, limit: int
) -> list[Hit]:
    """The chatbot's passages that share words with the question, best first (any word
    matches: a question is not a boolean query)."""
    return _search_terms(session, chatbot_id, question_terms(question), language, limit)


def _search_terms(
    session: Session, chatbot_id: uuid.UUID, terms: list[str], language: str | None, limit: int
) -> list[Hit]:
    if not terms or limit <= 0:
        return []
    if _postgres(session):
        rows = _search_postgres(session, chatbot_id, " ".join(terms), language, limit)
    else:
        rows = _search_sqlite(session.connection(), chatbot_id, terms, limit)
    return [_hit(chatbot_id, *row) for row in rows]


def _hit(
    chatbot_id: uuid.UUID,
    document_id: uuid.UUID,
    chunk_index: int,
    page: int | None,
    body: str,
    heading: str | None,
    filename: str,
    rank: float,
) -> Hit:
    return Hit(
        id=f"{document_id}:{chunk_index}",
        text=body,
        score=float(rank),
        metadata={
            "document_id": str(document_id),
            "chatbot_id": str(chatbot_id),
            "filename": filename,
            "chunk_index": int(chunk_index),
            **({"page": int(page)} if page is not None else {}),
            **({"heading": heading} if heading else {}),
        },
        retrievers=("lexical",),
    )


# PostgreSQL ranks by term frequency alone (ts_rank has no inverse document frequency), so
# "Which entry has code 2029969?" would favour the passages saying "entry" most often. Each
# of the question's lexemes is weighted by its BM25 idf within the chatbot, out of the chunks
# of the chatbot's ready documents. The ready documents' passages holding any of the lexemes
# are read once (one any-word tsquery; a document still being embedded adds no work: a
# 1,450-chunk one made every question's search 2-3x slower while it was processed) and each
# is matched and ranked once per lexeme it holds; the
# lexemes' document frequencies are counted from those same matches. (Counting each lexeme's
# passages in a subquery of its own let the planner re-run it per joined row: 4-11 ms per
# question on a 250-passage chatbot, 1.6 ms this way; on 20,000 passages both 17-25 ms,
# against about 6 for plain ts_rank.)
# A lexeme becomes a one-word tsquery quoted as tsquery input wants it (\ and ' escaped), so
# that it is matched as the index stored it, not parsed again.
_POSTGRES_SEARCH_CTES = r"""
    WITH terms AS MATERIALIZED (
        SELECT t.n, CAST('''' || replace(replace(t.lexeme, '\', '\\'), '''', '''''') || ''''
                         AS tsquery) AS query
        FROM unnest(tsvector_to_array(to_tsvector(CAST(:config AS regconfig), :words)))
             WITH ORDINALITY AS t(lexeme, n)
        LIMIT :max_terms
    ),
    candidates AS MATERIALIZED (
        SELECT p.id, p.tsv FROM passages AS p
        JOIN documents AS d ON d.id = p.document_id
        WHERE p.chatbot_id = :chatbot AND d.status = :ready
          AND p.tsv @@ (SELECT CAST(string_agg(CAST(query AS text), ' | ') AS tsquery)
                        FROM terms)
    ),
    hits AS MATERIALIZED (
        SELECT c.id, terms.n, ts_rank(c.tsv, terms.query, 1) AS rank
        FROM candidates AS c JOIN terms ON c.tsv @@ terms.query
    ),
    total AS (
        SELECT greatest(coalesce(sum(chunk_count), 0), 1) AS n
        FROM documents WHERE chatbot_id = :chatbot AND status = :ready
    ),
    weights AS (
        SELECT hits.n,
               ln(1 + (greatest(total.n, count(*)) - count(*) + 0.5) / (count(*) + 0.5)) AS idf
        FROM hits CROSS JOIN total
        GROUP BY hits.n, total.n
    ),
    scored AS (
        SELECT hits.id, sum(weights.idf * hits.rank) AS rank
        FROM hits JOIN weights ON weights.n = hits.n
        GROUP BY hits.id
    )
    """
_POSTGRES_RANKED = (
    "p.document_id, p.chunk_index, p.page, p.text, p.heading, d.filename, s.rank "
    "FROM scored AS s JOIN passages AS p ON p.id = s.id "
    "JOIN documents AS d ON d.id = p.document_id "
    "ORDER BY s.rank DESC, p.id LIMIT :limit"
)
_POSTGRES_SEARCH = text(_POSTGRES_SEARCH_CTES + "SELECT " + _POSTGRES_RANKED)


def _search_postgres(
    session: Session, chatbot_id: uuid.UUID, words: str, language: str | None, limit: int
) -> list[tuple[uuid.UUID, int, int | None, str, str | None, str, float]]:
    rows = session.execute(
        _POSTGRES_SEARCH,
        {
            "config": language if language in LANGUAGES else DEFAULT_LANGUAGE,
            "words": words,
            "max_terms": MAX_QUERY_TERMS,
            "chatbot": chatbot_id,
            "ready": DocumentStatus.ready.value,
            "limit": limit,
        },
    )
    return [(d, int(i), p, str(t), h, str(f), float(r)) for d, i, p, t, h, f, r in rows]


@dataclass
class Lookup:
    """One visit to the lexical index for a question: its ranking (best first), the passages
    of its rare exact terms, and which of the documents asked about are `ready`."""

    ranked: list[Hit]
    exact: list[Hit]
    ready: set[uuid.UUID]


# The combined statement's parts, each a parenthesised SELECT of 8 columns: the term number
# (-1: the ranking, -2: a ready document), document_id, chunk_index, page, text, heading,
# filename, rank.
_LOOKUP_EXACT = (
    "(SELECT {n}, " + _EXACT_COLUMNS + ", NULL FROM passages AS p "
    "JOIN documents AS d ON d.id = p.document_id "
    "WHERE p.chatbot_id = :chatbot AND d.status = :ready "
    "AND p.tsv @@ plainto_tsquery(CAST(:config AS regconfig), :term{n}) LIMIT :cap)"
)
_LOOKUP_READY = (
    "(SELECT -2, d.id, NULL, NULL, NULL, NULL, NULL, NULL FROM documents AS d "
    "WHERE d.id = ANY(CAST(:documents AS uuid[])) AND d.chatbot_id = :chatbot "
    "AND d.status = :ready)"
)


def lookup(
    session: Session,
    chatbot_id: uuid.UUID,
    question: str,
    language: str | None,
    limit: int,
    max_exact_passages: int,
    documents: Collection[uuid.UUID],
) -> Lookup:
    """`search`, `exact_matches` and `ready_documents(documents)` (the dense hits'
    documents) at once: on PostgreSQL in one statement, one round trip instead of three
    on every question."""
    if not _postgres(session):
        return Lookup(
            search(session, chatbot_id, question, language, limit),
            exact_matches(session, chatbot_id, question, language, max_exact_passages),
            ready_documents(session, chatbot_id, documents),
        )
    terms = question_terms(question) if limit > 0 else []
    exact = exact_terms(question) if max_exact_passages > 0 else []
    parts: list[str] = []
    values: dict[str, object] = {
        "chatbot": chatbot_id,
        "ready": DocumentStatus.ready.value,
        "config": language if language in LANGUAGES else DEFAULT_LANGUAGE,
    }
    if terms:
        parts.append("(SELECT -1, " + _POSTGRES_RANKED + ")")
        values.update(words=" ".join(terms), max_terms=MAX_QUERY_TERMS, limit=limit)
    for n, term in enumerate(exact):
        parts.append(_LOOKUP_EXACT.format(n=n))
        values[f"term{n}"] = term
    if exact:
        values["cap"] = max_exact_passages + 1
    if documents:
        parts.append(_LOOKUP_READY)
        values["documents"] = sorted(str(d) for d in documents)
    if not parts:
        return Lookup([], [], set())
    head = _POSTGRES_SEARCH_CTES if terms else ""
    rows = session.execute(text(head + " UNION ALL ".join(parts)), values).all()
    ranked = [
        _hit(chatbot_id, uuid.UUID(str(d)), int(i), p, str(t), h, str(f), float(r))
        for n, d, i, p, t, h, f, r in rows
        if n == -1
    ]
    ranked.sort(key=lambda hit: -hit.score)  # stable: ties keep the statement's order
    found = _exact_hits(chatbot_id, [row for row in rows if row[0] >= 0], max_exact_passages)
    ready = {uuid.UUID(str(row[1])) for row in rows if row[0] == -2}
    return Lookup(ranked, found, ready)


def ready_documents(
    session: Session, chatbot_id: uuid.UUID, documents: Collection[uuid.UUID]
) -> set[uuid.UUID]:
    """Those of `documents` that are the chatbot's and `ready`."""
    if not documents:
        return set()
    return set(
        session.scalars(
            select(Document.id).where(
                Document.id.in_(documents),
                Document.chatbot_id == chatbot_id,
                Document.status == DocumentStatus.ready,
            )
        )
    )


_SQLITE_SEARCH = text(
    "SELECT p.document_id, p.chunk_index, p.page, p.text, p.heading, d.filename, "
    "-bm25(passages_fts, 1.0, 0.0) AS rank "
    "FROM passages_fts CROSS JOIN passages p ON p.id = passages_fts.rowid "
    "CROSS JOIN documents d ON d.id = p.document_id "
    "WHERE passages_fts MATCH :match AND p.chatbot_id = :chatbot AND d.status = :ready "
    "ORDER BY bm25(passages_fts, 1.0, 0.0), p.id LIMIT :limit"
)


def _search_sqlite(
    connection: Connection, chatbot_id: uuid.UUID, terms: list[str], limit: int
) -> list[tuple[uuid.UUID, int, int | None, str, str | None, str, float]]:
    # Each term a quoted phrase (a token holds no quote), OR-ed, inside the chatbot's own rows:
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
    return [
        (uuid.UUID(str(d)), int(i), p, str(t), h, str(f), float(r)) for d, i, p, t, h, f, r in rows
    ]


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

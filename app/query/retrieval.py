"""Which passages answer a question: the dense retriever (the vector store), the lexical
one (the database's full-text index, app/documents/passages.py), or both fused by rank."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.documents import passages
from app.rag.fusion import reciprocal_rank_fusion
from app.rag.vector_store import Hit


def dense_depth(settings: Settings, mode: str, top_k: int) -> int:
    """How many dense candidates a mode needs: `top_k` alone, more to fuse, none lexically."""
    if mode == "dense":
        return top_k
    if mode == "lexical":
        return 0
    return max(top_k, settings.RETRIEVAL_CANDIDATES)


def find_passages(
    settings: Settings,
    session: Session,
    dense_hits: list[Hit],
    chatbot_id: uuid.UUID,
    language: str | None,
    mode: str,
    question: str,
    top_k: int,
) -> tuple[list[Hit], set[uuid.UUID]]:
    """The chatbot's `top_k` passages for the question, given the vector store's
    `dense_depth()` nearest passages at or above MIN_SCORE (found before this transaction,
    so no connection is held while the question is embedded), and the documents already
    known to be `ready` (`citable` need not ask again). Dense mode returns the dense hits as
    they are (cosine scores); lexical and hybrid modes return fused scores (one ranking
    fused is its RRF). The lexical search runs in the caller's transaction."""
    if mode == "dense":
        return dense_hits[:top_k], set()
    depth = max(top_k, settings.RETRIEVAL_CANDIDATES)
    rankings: dict[str, list[Hit]] = {}
    if mode == "hybrid":
        rankings["dense"] = dense_hits
    found = passages.lookup(
        session,
        chatbot_id,
        question,
        language,
        depth,
        settings.RETRIEVAL_EXACT_MAX_PASSAGES,
        {doc for doc in map(document_of, dense_hits) if doc is not None},
    )
    rankings["lexical"] = found.ranked
    # A third ranking: the passages holding a rare exact term of the question. Fused like the
    # others, it lifts such a passage above the look-alikes both retrievers half agree on,
    # while a passage both rank first stays first.
    rankings["exact"] = found.exact
    ready = set(found.ready)  # the lexical and exact hits are of ready documents only
    ready.update(doc for doc in map(document_of, found.ranked + found.exact) if doc is not None)
    return reciprocal_rank_fusion(rankings, top_k), ready


def document_of(hit: Hit) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(hit.metadata.get("document_id", "")))
    except ValueError:
        return None

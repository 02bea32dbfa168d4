"""Which passages answer a question: the dense retriever (the vector store), the lexical
one (the database's full-text index, app/documents/passages.py), or both fused by rank."""

from __future__ import annotations

import dataclasses
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
) -> list[Hit]:
    """The chatbot's `top_k` passages for the question, given the vector store's
    `dense_depth()` nearest passages at or above MIN_SCORE (found before this transaction,
    so no connection is held while the question is embedded). Dense mode returns them as
    they are (cosine scores); lexical and hybrid modes return fused scores (one ranking
    fused is its RRF). The lexical search runs in the caller's transaction."""
    if mode == "dense":
        return dense_hits[:top_k]
    depth = max(top_k, settings.RETRIEVAL_CANDIDATES)
    rankings: dict[str, list[Hit]] = {}
    if mode == "hybrid":
        rankings["dense"] = dense_hits
    rankings["lexical"] = passages.search(session, chatbot_id, question, language, depth)
    fused = reciprocal_rank_fusion(rankings, depth)
    exact = passages.exact_matches(
        session, chatbot_id, question, language, settings.RETRIEVAL_EXACT_MAX_PASSAGES
    )
    return exact_first(exact, fused, top_k)


def exact_first(exact: list[Hit], fused: list[Hit], top_k: int) -> list[Hit]:
    """The passages holding a rare exact term of the question first (with "exact" among
    their retrievers and their fused score where the fusion found them), then the fusion's
    ranking."""
    if not exact:
        return fused[:top_k]
    by_id = {hit.id: hit for hit in fused}
    first = []
    for hit in exact:
        fused_hit = by_id.get(hit.id)
        base = fused_hit if fused_hit is not None else dataclasses.replace(hit, score=0.0)
        retrievers = tuple(dict.fromkeys((*base.retrievers, "lexical", "exact")))
        first.append(dataclasses.replace(base, retrievers=retrievers))
    pinned = {hit.id for hit in first}
    return (first + [hit for hit in fused if hit.id not in pinned])[:top_k]

"""Which passages answer a question: the dense retriever (the vector store), the lexical
one (the database's full-text index, app/documents/passages.py), or both fused by rank."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from app.core.config import Settings
from app.core.db import Database
from app.documents import passages
from app.rag.fusion import reciprocal_rank_fusion
from app.rag.vector_store import Hit


def find_passages(
    settings: Settings,
    db: Database,
    dense: Callable[[int], list[Hit]],
    chatbot_id: uuid.UUID,
    language: str | None,
    mode: str,
    question: str,
    top_k: int,
) -> list[Hit]:
    """The chatbot's `top_k` passages for the question. `dense(n)`: the vector store's n
    nearest passages at or above MIN_SCORE. Dense mode returns them as they are (cosine
    scores); lexical and hybrid modes return fused scores (one ranking fused is its RRF)."""
    if mode == "dense":
        return dense(top_k)
    depth = max(top_k, settings.RETRIEVAL_CANDIDATES)
    rankings: dict[str, list[Hit]] = {}
    if mode == "hybrid":
        rankings["dense"] = dense(depth)
    with db.session() as session:
        rankings["lexical"] = passages.search(session, chatbot_id, question, language, depth)
    return reciprocal_rank_fusion(rankings, top_k)

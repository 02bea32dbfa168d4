"""Reciprocal rank fusion: one ranking from several retrievers' rankings.

Each passage scores the sum of 1 / (k + rank) over the rankings it appears in (rank from 1),
so what two retrievers agree on rises, and the retrievers' own scores (a cosine, a bm25)
never have to be put on one scale. k = 60 is the value of the original paper (Cormack,
Clarke and Büttcher, 2009), which damps the difference between the first few ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from app.rag.vector_store import Hit

RRF_K = 60


def reciprocal_rank_fusion(
    rankings: Mapping[str, Sequence[Hit]], limit: int, k: int = RRF_K
) -> list[Hit]:
    """The first `limit` passages by fused score, each with the names of the retrievers that
    found it (in the order of `rankings`). Passages are the same when their ids are; the text
    and metadata are taken from the first ranking that has the passage."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    found_by: dict[str, list[str]] = {}
    best_rank: dict[str, int] = {}
    for name, hits in rankings.items():
        seen: set[str] = set()
        for rank, hit in enumerate(hits, start=1):
            if hit.id in seen:  # a ranking lists each passage once
                continue
            seen.add(hit.id)
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank)
            first.setdefault(hit.id, hit)
            found_by.setdefault(hit.id, []).append(name)
            best_rank[hit.id] = min(best_rank.get(hit.id, rank), rank)
    order = sorted(scores, key=lambda i: (-scores[i], best_rank[i]))
    return [
        dataclasses.replace(first[i], score=scores[i], retrievers=tuple(found_by[i]))
        for i in order[:limit]
    ]

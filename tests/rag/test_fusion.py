"""Reciprocal rank fusion: agreement rises, each source says who found it."""

from __future__ import annotations

from app.rag.fusion import RRF_K, reciprocal_rank_fusion
from app.rag.vector_store import Hit


def _hits(*ids: str, retriever: str) -> list[Hit]:
    return [
        Hit(id=i, text=f"{retriever} {i}", score=0.9, metadata={"n": i}, retrievers=(retriever,))
        for i in ids
    ]


def test_a_passage_both_retrievers_rank_beats_each_ones_first():
    fused = reciprocal_rank_fusion(
        {
            "dense": _hits("a", "shared", "b", retriever="dense"),
            "lexical": _hits("c", "shared", retriever="lexical"),
        },
        limit=10,
    )
    assert [h.id for h in fused] == ["shared", "a", "c", "b"]
    assert fused[0].score == 2 / (RRF_K + 2)
    assert fused[0].retrievers == ("dense", "lexical")
    assert fused[0].text == "dense shared"  # the first ranking's copy
    assert fused[1].retrievers == ("dense",) and fused[1].score == 1 / (RRF_K + 1)
    assert fused[2].retrievers == ("lexical",) and fused[2].score == 1 / (RRF_K + 1)
    assert fused[3].score == 1 / (RRF_K + 3)


def test_limit_duplicates_and_empty_rankings():
    fused = reciprocal_rank_fusion(
        {"dense": _hits("x", "x", "y", retriever="dense"), "lexical": []}, limit=1
    )
    assert [(h.id, h.score, h.retrievers) for h in fused] == [("x", 1 / (RRF_K + 1), ("dense",))]
    assert reciprocal_rank_fusion({"dense": [], "lexical": []}, limit=5) == []

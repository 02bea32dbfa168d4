"""Question embeddings micro-batched across threads, with the real model."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from app.rag.batching import QueryEmbedder

QUESTIONS = [
    "When is support open?",
    "How long is the warranty of the blender?",
    "Can I return an unused item?",
    "Wie lange dauert die Lieferung nach Deutschland?",
    "What is the wattage of the Turbo blender motor?",
    "Who do I call about an invoice?",
    "Is there a discount for students?",
    "Où se trouve le magasin le plus proche ?",
]


class HeldFirstCall:
    """`on_batch` hook: the first model call waits at its start until released, so the
    questions asked meanwhile queue up for one call."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, size: int) -> None:
        self.sizes.append(size)
        if len(self.sizes) == 1:
            self.entered.set()
            assert self.release.wait(30)


def _queue_behind_a_held_call(
    batcher: QueryEmbedder, pool: ThreadPoolExecutor, first: str, rest: list[str]
) -> tuple[Future[list[float]], list[Future[list[float]]], HeldFirstCall]:
    held = HeldFirstCall()
    batcher.on_batch = held
    leader = pool.submit(batcher.embed, first)
    assert held.entered.wait(30)
    followers = [pool.submit(batcher.embed, text) for text in rest]
    assert batcher.wait_until_waiting(len(rest), timeout=30)
    held.release.set()
    return leader, followers, held


def test_concurrent_questions_share_one_model_call_and_get_their_own_vectors(runtime):
    embedder = runtime.embedder
    batcher = QueryEmbedder(embedder, cache_size=0)
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        leader, followers, held = _queue_behind_a_held_call(
            batcher, pool, QUESTIONS[0], QUESTIONS[1:]
        )
        vectors = [leader.result(30)] + [f.result(30) for f in followers]
    # The leader's call held one question; all the others waited and went in the next one.
    assert held.sizes == [1, len(QUESTIONS) - 1]
    assert batcher.stats.calls == 2 and batcher.stats.embedded == len(QUESTIONS)
    for question, vector in zip(QUESTIONS, vectors, strict=True):
        alone = np.asarray(embedder.embed_query(question))
        assert np.allclose(np.asarray(vector), alone, atol=1e-5), question
    # Each caller got its own question's vector, not a neighbour's.
    similarity = np.asarray(vectors) @ np.asarray(vectors).T
    assert all(int(np.argmax(row)) == i for i, row in enumerate(similarity))


def test_a_lone_question_is_embedded_at_once_in_its_own_call(runtime):
    embedder = runtime.embedder
    calls: list[list[str]] = []

    def embed_many(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return embedder.embed_queries(texts)

    batcher = QueryEmbedder(embedder, cache_size=0, embed_many=embed_many)
    for question in QUESTIONS[:3]:
        batcher.embed(question)
    assert calls == [[q] for q in QUESTIONS[:3]]
    assert batcher.waiting == 0


def _failing_on(word: str, real: Callable[[list[str]], list[list[float]]]):  # type: ignore[no-untyped-def]
    def embed_many(texts: list[str]) -> list[list[float]]:
        if any(word in t for t in texts):
            raise ValueError(f"cannot embed {word}")
        return real(texts)

    return embed_many


def test_a_failed_call_raises_in_every_caller_it_held_and_the_next_ones_work(runtime):
    embedder = runtime.embedder
    batcher = QueryEmbedder(
        embedder, cache_size=8, embed_many=_failing_on("poison", embedder.embed_queries)
    )
    with ThreadPoolExecutor(4) as pool:
        leader, followers, _ = _queue_behind_a_held_call(
            batcher, pool, "first question", ["second", "poison pill", "third"]
        )
        assert len(leader.result(30)) == embedder.dimension
        for future in followers:
            with pytest.raises(ValueError, match="cannot embed poison"):
                future.result(30)
    # Nothing failed was remembered, and the batcher is not left busy.
    assert len(batcher.cache) == 1
    assert len(batcher.embed("second")) == embedder.dimension
    with pytest.raises(ValueError, match="cannot embed poison"):
        batcher.embed("poison again")


def test_the_cache_is_bounded_and_keyed_by_model_and_text(runtime):
    embedder = runtime.embedder
    calls: list[str] = []

    def embed_many(texts: list[str]) -> list[list[float]]:
        calls.extend(texts)
        return embedder.embed_queries(texts)

    batcher = QueryEmbedder(embedder, cache_size=3, embed_many=embed_many)
    first = [batcher.embed(q) for q in QUESTIONS[:5]]
    assert len(batcher.cache) == 3 and calls == QUESTIONS[:5]
    # The newest are remembered (same vector, no model call); the oldest were dropped.
    assert np.allclose(batcher.embed(QUESTIONS[4]), first[4], atol=1e-6)
    assert batcher.stats.cache_hits == 1 and len(calls) == 5
    batcher.embed(QUESTIONS[0])
    assert calls[-1] == QUESTIONS[0] and len(batcher.cache) == 3
    # Another model's vector for the same text is another entry.
    other = QueryEmbedder(embedder, cache_size=3, embed_many=embed_many)
    other.model_name = "another/model"
    other.cache = batcher.cache
    other.embed(QUESTIONS[0])
    assert batcher.stats.cache_hits == 1 and other.stats.cache_hits == 0
    assert calls[-1] == QUESTIONS[0] and len(calls) == 7


def test_cache_size_zero_remembers_nothing(runtime):
    embedder = runtime.embedder
    batcher = QueryEmbedder(embedder, cache_size=0)
    batcher.embed(QUESTIONS[0])
    batcher.embed(QUESTIONS[0])
    assert len(batcher.cache) == 0
    assert batcher.stats.calls == 2 and batcher.stats.cache_hits == 0

"""Per-chatbot state in a long-lived process has a bound: Chroma collection handles (an LRU),
the memory rate-limit storage (idle keys forgotten), embedded Chroma's index cache (an
open-files limit large enough to hold every collection)."""

from __future__ import annotations

import resource
import time
import uuid

from limits import parse

from app.core.ratelimit import IDLE_SWEEP_SECONDS, RateLimiter
from app.rag.vector_store import ChunkRecord, VectorStore, raise_open_files_limit


def _record(n: int, vector: list[float]) -> ChunkRecord:
    return ChunkRecord(f"d:{n}", f"passage {n}", vector, {"document_id": "d", "chunk_index": n})


def test_handle_cache_evicts_the_least_recently_used_and_evicted_chatbots_still_answer(
    tmp_path,
):
    store = VectorStore(path=tmp_path / "chroma", handle_cache_size=2)
    bots = [uuid.uuid4() for _ in range(3)]
    axes = ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    for n, (bot, axis) in enumerate(zip(bots, axes, strict=True)):
        store.add(bot, uuid.uuid4(), "model-a", 3, [_record(n, axis)])
    for bot in bots:
        assert store.query(bot, "model-a", [1.0, 1.0, 1.0], 1)
    cache = store._handles
    assert len(cache) == 2
    assert cache.get(bots[0]) is None  # the least recently used went first
    assert cache.get(bots[1]) is not None and cache.get(bots[2]) is not None

    # bots[0] was evicted: its question still finds its own passage (and caches it again),
    # pushing out bots[1], the least recently used now (bots[2] was read after it above).
    hits = store.query(bots[0], "model-a", [1.0, 0.0, 0.0], 1)
    assert [h.id for h in hits] == ["d:0"] and abs(hits[0].score - 1.0) < 1e-6
    assert cache.get(bots[1]) is None and len(cache) == 2
    assert cache.get(bots[0]) is not None and cache.get(bots[2]) is not None
    assert [h.id for h in store.query(bots[1], "model-a", [0.0, 1.0, 0.0], 1)] == ["d:1"]


def test_handle_cache_of_zero_keeps_nothing_and_still_answers(tmp_path):
    store = VectorStore(path=tmp_path / "chroma", handle_cache_size=0)
    bot = uuid.uuid4()
    store.add(bot, uuid.uuid4(), "model-a", 3, [_record(0, [1.0, 0.0, 0.0])])
    assert [h.id for h in store.query(bot, "model-a", [1.0, 0.0, 0.0], 1)] == ["d:0"]
    assert len(store._handles) == 0


def test_memory_rate_limit_storage_forgets_idle_keys_but_not_live_limits():
    limiter = RateLimiter("memory://")
    try:
        per_minute = parse("1/minute")
        for n in range(200):
            assert limiter.hit(per_minute, "public-client", f"bot-{n}", "10.0.0.1").allowed
        assert not limiter.hit(per_minute, "public-client", "bot-0", "10.0.0.1").allowed
        assert len(limiter.storage.events) == 200  # type: ignore[attr-defined]

        # Within the window every key holds a live hit: nothing is forgotten, the limit holds.
        assert limiter.forget_idle() == 0
        assert not limiter.hit(per_minute, "public-client", "bot-0", "10.0.0.1").allowed

        # After the window, every key is idle and goes; counting starts again from zero.
        assert limiter.forget_idle(time.time() + 61) == 200
        assert limiter.storage.events == {}  # type: ignore[attr-defined]
        assert limiter.storage.locks == {}  # type: ignore[attr-defined]
        assert limiter.hit(per_minute, "public-client", "bot-0", "10.0.0.1").allowed
    finally:
        limiter.storage.timer.cancel()  # type: ignore[attr-defined]


def test_hits_sweep_idle_keys_once_the_sweep_interval_has_passed(monkeypatch):
    limiter = RateLimiter("memory://")
    try:
        per_second = parse("5/second")
        for n in range(50):
            limiter.hit(per_second, "public-session", f"bot-{n}", "s")
        later = time.time() + IDLE_SWEEP_SECONDS + 2
        monkeypatch.setattr("app.core.ratelimit.time.time", lambda: later)
        # The next hit (any key) sweeps first: only its own key is left.
        assert limiter.hit(per_second, "public-session", "bot-new", "s").allowed
        assert list(limiter.storage.events) != []  # type: ignore[attr-defined]
        assert len(limiter.storage.events) == 1  # type: ignore[attr-defined]
    finally:
        limiter.storage.timer.cancel()  # type: ignore[attr-defined]


def test_open_files_limit_is_raised_but_never_lowered():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
        assert raise_open_files_limit(soft) == soft
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
        assert raise_open_files_limit(soft - 10) == soft  # asked for less: left alone
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

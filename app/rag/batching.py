"""Question embeddings for concurrent requests: micro-batched and remembered.

Each question's request thread calls `QueryEmbedder.embed`. The first caller that finds the
model idle runs it at once on every question waiting at that moment (at concurrency 1: its
own, so nothing waits for company); callers that arrive while the model is busy queue up and
the next of them to wake takes the whole queue in one call. One model call for eight short
questions costs far less than eight calls, and they no longer compete for the CPU's cores.

Vectors are remembered in a bounded LRU keyed by the model and the exact text (a widget's
suggested questions, a retried request). Passage embedding (ingestion) does not come here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.rag.embeddings import Embedder

# A batch never holds more questions than this (the model's own batch size is the caller's).
MAX_BATCH = 64


@dataclass
class _Waiting:
    text: str
    vector: list[float] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class QueryEmbedderStats:
    """Counters for tests and metrics: model calls made, questions embedded, cache hits."""

    calls: int = 0
    embedded: int = 0
    cache_hits: int = 0
    largest_batch: int = 0


class VectorCache:
    """At most `size` vectors (float32), least recently used dropped first; thread-safe."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[str, str]) -> list[float] | None:
        if self.size <= 0:
            return None
        with self._lock:
            vector = self._items.get(key)
            if vector is None:
                return None
            self._items.move_to_end(key)
        return vector.tolist()  # type: ignore[no-any-return]

    def put(self, key: tuple[str, str], vector: Sequence[float]) -> None:
        if self.size <= 0:
            return
        stored = np.asarray(vector, dtype=np.float32)
        with self._lock:
            self._items[key] = stored
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class QueryEmbedder:
    """`embed(text)` for many threads at once; blocking (call it from a worker thread).

    The model call is `embed_many` (default: the embedder's `embed_queries`): it gets the
    questions in order and returns one vector per question. When it fails, every caller
    whose question was in that call gets its error."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        cache_size: int = 1024,
        max_batch: int = MAX_BATCH,
        embed_many: Callable[[list[str]], list[list[float]]] | None = None,
    ):
        self.embedder = embedder
        self.model_name = embedder.model_name
        self._embed_many = embed_many or embedder.embed_queries
        self._max_batch = max(1, max_batch)
        self.cache = VectorCache(cache_size)
        self.stats = QueryEmbedderStats()
        self._waiting: list[_Waiting] = []
        self._busy = False
        self._changed = threading.Condition()
        # Called with the batch size when a model call starts (tests hold a batch open here).
        self.on_batch: Callable[[int], None] | None = None

    @property
    def waiting(self) -> int:
        """Questions queued for the next model call (for priorities elsewhere)."""
        return len(self._waiting)

    def wait_until_waiting(self, count: int, timeout: float) -> bool:
        """Block until `count` questions are queued for the next call (tests, diagnostics)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._waiting) >= count, timeout)

    def embed(self, text: str) -> list[float]:
        key = (self.model_name, text)
        cached = self.cache.get(key)
        if cached is not None:
            with self._changed:
                self.stats.cache_hits += 1
            return cached
        mine = _Waiting(text)
        with self._changed:
            self._waiting.append(mine)
            self._changed.notify_all()  # for `wait_until_waiting`; the others wait on again
        while True:
            with self._changed:
                while self._busy and not mine.done:
                    self._changed.wait()
                if mine.done:
                    break
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                self._busy = True
            self._run(batch)
        if mine.error is not None:
            raise mine.error
        assert mine.vector is not None
        self.cache.put(key, mine.vector)
        return mine.vector

    def _run(self, batch: list[_Waiting]) -> None:
        """One model call for `batch`; then wakes everyone (their answers, or the next
        leader)."""
        try:
            if self.on_batch is not None:
                self.on_batch(len(batch))
            vectors = self._embed_many([item.text for item in batch])
            if len(vectors) != len(batch):
                raise RuntimeError(f"{len(vectors)} vectors for {len(batch)} questions")
            for item, vector in zip(batch, vectors, strict=True):
                item.vector = vector
        except BaseException as exc:
            for item in batch:
                item.error = exc
        finally:
            with self._changed:
                for item in batch:
                    item.done = True
                self.stats.calls += 1
                self.stats.embedded += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                self._busy = False
                self._changed.notify_all()

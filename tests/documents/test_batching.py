"""Small documents of one customer claimed in one turn: embedded in shared batches, written to
Chroma once per batch and chatbot, each completed (or failed, or dropped) on its own; the next
turn prepared while this one is embedded."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.core.db import get_database
from app.ingest.worker import IngestWorker
from app.models import Document, DocumentStatus
from app.models.base import utcnow
from app.rag.vector_store import collection_name
from tests import docgen
from tests.factories import Tenant, create_chatbot, register, upload


def _article(folder: Path, marker: str, paragraphs: int = 4) -> Path:
    """A few paragraphs that name `marker` throughout: several chunks of the packaged model."""
    text = "\n\n".join(
        f"Section {i} of the {marker} handbook. "
        + " ".join(
            f"The {marker} team checks item {i}.{j} of the warehouse before the delivery."
            for j in range(12)
        )
        for i in range(paragraphs)
    )
    return docgen.make_txt(folder / f"{marker}.txt", text)


def _upload_articles(
    client, tenant: Tenant, bot: dict, folder: Path, markers: Sequence[str]
) -> dict[str, uuid.UUID]:  # type: ignore[no-untyped-def]
    return {
        marker: uuid.UUID(upload(client, tenant, bot["id"], _article(folder, marker))["id"])
        for marker in markers
    }


class RecordingEmbedder:
    """The real embedder; records each call's size, can hold its first call until `go`, and
    fails any call that contains `poison`."""

    def __init__(self, embedder: Any, *, hold: bool = False, poison: str | None = None) -> None:
        self.embedder = embedder
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.go = threading.Event()
        if not hold:
            self.go.set()
        self.poison = poison

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embedder, name)

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(len(texts))
        self.entered.set()
        assert self.go.wait(120)
        if self.poison is not None and any(self.poison in t for t in texts):
            raise RuntimeError("the model choked on this text")
        return list(self.embedder.embed_passages(texts))


class RecordingStore:
    """The real store; records the chatbot of each write."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.writes: list[uuid.UUID] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def add(self, chatbot_id: uuid.UUID, *args: Any) -> None:
        self.writes.append(chatbot_id)
        self.store.add(chatbot_id, *args)


class CountingSandbox:
    """The real sandbox; `extracted` is set once `expected` files were extracted."""

    def __init__(self, sandbox: Any, expected: int) -> None:
        self.sandbox = sandbox
        self.count = 0
        self.expected = expected
        self.extracted = threading.Event()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sandbox, name)

    def extract(self, *args: Any, **kwargs: Any) -> Any:
        sections = self.sandbox.extract(*args, **kwargs)
        with self._lock:
            self.count += 1
            if self.count >= self.expected:
                self.extracted.set()
        return sections


def _worker(runtime, name: str, embedder=None, store=None, sandbox=None) -> IngestWorker:  # type: ignore[no-untyped-def]
    return IngestWorker(
        runtime.settings,
        get_database(),
        embedder or runtime.embedder,
        store or runtime.store,
        sandbox or runtime.sandbox,
        name,
    )


def _stored(runtime, chatbot_id: uuid.UUID, document_id: uuid.UUID) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    collection = runtime.store.client.get_collection(
        collection_name(chatbot_id), embedding_function=None
    )
    return dict(
        collection.get(where={"document_id": str(document_id)}, include=["documents", "embeddings"])
    )


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _delete_bots(client, tenant: Tenant, *bots: dict) -> None:  # type: ignore[no-untyped-def]
    """Leave nothing queued or claimed for other tests' workers."""
    for bot in bots:
        assert (
            client.delete(f"/api/chatbots/{bot['id']}", headers=tenant.headers).status_code == 204
        )


def test_small_documents_of_one_customer_are_embedded_and_written_together(
    client, paused_workers, tmp_path, db_session
):
    runtime = paused_workers
    tenant = register(client)
    bot, other = create_chatbot(client, tenant), create_chatbot(client, tenant)
    docs = _upload_articles(client, tenant, bot, tmp_path, ["amber", "birch", "cedar", "delta"])
    docs |= _upload_articles(client, tenant, other, tmp_path, ["ember", "flint"])
    embedder, store = RecordingEmbedder(runtime.embedder), RecordingStore(runtime.store)
    worker = _worker(runtime, "batcher", embedder, store)

    assert worker.run_once() is True  # one turn: all six
    rows = {
        r.id: r for r in db_session.scalars(select(Document).where(Document.id.in_(docs.values())))
    }
    assert {r.status for r in rows.values()} == {DocumentStatus.ready}
    assert {r.attempts for r in rows.values()} == {1}
    chunks = sum(r.chunk_count for r in rows.values())
    assert all(r.chunk_count >= 2 for r in rows.values()), [r.chunk_count for r in rows.values()]
    # Shared batches of up to max(4 x batch, 32) chunks, not one call per document...
    step = max(4 * runtime.embedder.batch_size, 32)
    assert embedder.calls == [min(step, chunks - i) for i in range(0, chunks, step)]
    # ...and one write per chatbot and batch.
    assert sorted(map(str, store.writes)) == sorted([bot["id"], other["id"]] * len(embedder.calls))
    for marker, document_id in docs.items():
        row = rows[document_id]
        chatbot_id = row.chatbot_id
        assert runtime.store.count(chatbot_id, document_id) == row.chunk_count
        stored = _stored(runtime, chatbot_id, document_id)
        # Each document's own text, with its own vectors (nothing shifted between documents).
        assert all(marker in text for text in stored["documents"])
        alone = runtime.embedder.embed_passages(stored["documents"])
        for vector, expected in zip(stored["embeddings"], alone, strict=True):
            assert _cosine(vector, expected) > 0.999
        assert row.progress == 1.0 and row.metadata_json["embedding_model"]
    _delete_bots(client, tenant, bot, other)


def test_a_failing_document_fails_or_is_retried_alone(client, paused_workers, tmp_path, db_session):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    chatbot_id = uuid.UUID(bot["id"])
    fine = _upload_articles(client, tenant, bot, tmp_path, ["gamma"])
    broken = uuid.UUID(
        upload(client, tenant, bot["id"], docgen.make_corrupt_pdf(tmp_path / "broken.pdf"))["id"]
    )
    fine |= _upload_articles(client, tenant, bot, tmp_path, ["hazel", "poison", "iris"])
    poisoned = fine.pop("poison")
    embedder = RecordingEmbedder(runtime.embedder, poison="poison")
    worker = _worker(runtime, "mixed", embedder)

    assert worker.run_once() is True
    db_session.expire_all()
    failed = db_session.get(Document, broken)
    assert failed.status == DocumentStatus.failed and "damaged" in (failed.error or "").lower()
    retried = db_session.get(Document, poisoned)
    assert retried.status == DocumentStatus.queued and retried.attempts == 1
    assert "unexpectedly" in (retried.error or "") and retried.lease_expires_at > utcnow()
    assert runtime.store.count(chatbot_id, poisoned) == 0
    assert runtime.store.count(chatbot_id, broken) == 0
    for document_id in fine.values():
        row = db_session.get(Document, document_id)
        assert row.status == DocumentStatus.ready, row.error
        assert runtime.store.count(chatbot_id, document_id) == row.chunk_count > 0
    # The shared call failed, then each document was embedded on its own.
    assert len(embedder.calls) == 1 + len(fine) + 1
    _delete_bots(client, tenant, bot)


def test_a_document_deleted_mid_batch_leaves_no_vectors(
    client, paused_workers, tmp_path, db_session
):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    chatbot_id = uuid.UUID(bot["id"])
    docs = _upload_articles(client, tenant, bot, tmp_path, ["juniper", "kelp", "larch"])
    embedder = RecordingEmbedder(runtime.embedder, hold=True)
    worker = _worker(runtime, "held", embedder)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        assert embedder.entered.wait(120)  # the turn is claimed and being embedded
        gone = docs.pop("kelp")
        response = client.delete(
            f"/api/chatbots/{bot['id']}/documents/{gone}", headers=tenant.headers
        )
        assert response.status_code == 204
    finally:
        embedder.go.set()  # the worker writes the whole batch now, the deleted one's too
        thread.join(120)
    assert not thread.is_alive()
    assert runtime.store.count(chatbot_id, gone) == 0  # the worker's cleanup removed it
    assert db_session.get(Document, gone) is None
    for document_id in docs.values():
        row = db_session.get(Document, document_id)
        assert row.status == DocumentStatus.ready
        assert runtime.store.count(chatbot_id, document_id) == row.chunk_count > 0
    _delete_bots(client, tenant, bot)


def test_a_turn_is_bounded_and_fair_between_customers(
    client, paused_workers, tmp_path, monkeypatch, db_session
):
    runtime = paused_workers
    monkeypatch.setattr(runtime.settings, "INGEST_BATCH_DOCUMENTS", 4)
    a, b = register(client), register(client)
    bot_a, bot_b = create_chatbot(client, a), create_chatbot(client, b)
    backlog = [
        uuid.UUID(
            upload(client, a, bot_a["id"], docgen.make_txt(tmp_path / f"a{i}.txt", f"A {i}."))["id"]
        )
        for i in range(30)
    ]
    late = uuid.UUID(
        upload(client, b, bot_b["id"], docgen.make_txt(tmp_path / "b.txt", "B's only one."))["id"]
    )
    worker = _worker(runtime, "fair-batches")
    turns = []
    for _ in range(3):
        claims = worker.claim_batch()
        turns.append([c.document_id for c in claims])
        worker.finish(worker.extract(claims))
    # A's oldest four; then B, served longest ago, before A's 26 others; then A again.
    assert turns == [backlog[:4], [late], backlog[4:8]]
    assert db_session.get(Document, late).status == DocumentStatus.ready

    # The size budget: a turn's uploads weigh at most INGEST_BATCH_BYTES together.
    size = db_session.get(Document, backlog[8]).size_bytes
    monkeypatch.setattr(runtime.settings, "INGEST_BATCH_BYTES", 2 * size)
    claims = worker.claim_batch()
    assert [c.document_id for c in claims] == backlog[8:10]
    worker.finish(worker.extract(claims))
    # A document larger than the budget goes alone.
    monkeypatch.setattr(runtime.settings, "INGEST_BATCH_BYTES", size - 1)
    claims = worker.claim_batch()
    assert [c.document_id for c in claims] == backlog[10:11]
    worker.finish(worker.extract(claims))
    _delete_bots(client, a, bot_a)
    _delete_bots(client, b, bot_b)


def test_the_next_turn_is_prepared_meanwhile_and_given_back_on_stop(
    client, paused_workers, tmp_path, monkeypatch, db_session
):
    runtime = paused_workers
    monkeypatch.setattr(runtime.settings, "INGEST_BATCH_DOCUMENTS", 2)
    monkeypatch.setattr(runtime.settings, "INGEST_PREFETCH", True)
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    docs = list(
        _upload_articles(client, tenant, bot, tmp_path, ["maple", "nut", "oak", "pine"]).values()
    )
    embedder = RecordingEmbedder(runtime.embedder, hold=True)
    sandbox = CountingSandbox(runtime.sandbox, expected=4)
    worker = _worker(runtime, "prefetcher", embedder, sandbox=sandbox)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        assert embedder.entered.wait(120)  # the first turn is being embedded...
        assert sandbox.extracted.wait(120)  # ...while the second was claimed and extracted
        stop.set()
    finally:
        embedder.go.set()
        thread.join(120)
    assert not thread.is_alive()
    db_session.expire_all()
    rows = [db_session.get(Document, d) for d in docs]
    assert [r.status for r in rows] == [DocumentStatus.ready] * 2 + [DocumentStatus.queued] * 2
    # The prepared turn went back to the queue as it was: no attempt spent, no lease held.
    assert [(r.attempts, r.lease_owner) for r in rows[2:]] == [(0, None), (0, None)]
    assert all(runtime.store.count(uuid.UUID(bot["id"]), d) == 0 for d in docs[2:])
    _delete_bots(client, tenant, bot)

"""The ingestion worker: claim a document, extract, chunk, embed, store, mark it ready.

Runs in threads (the embedded worker of the API process, or `python -m app.ingest`); all of
its work is blocking by design and never touches an event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from app.core.config import Settings
from app.core.db import Database
from app.core.metrics import CHUNKS, INGESTED
from app.documents.passages import PassageText, replace_passages
from app.ingest import deletions, queue
from app.models import DocumentStatus
from app.rag.chunking import Chunk, chunk_sections
from app.rag.embeddings import Embedder
from app.rag.extract import MSG_EMPTY, ExtractionError, ExtractorUnavailable, Sandbox
from app.rag.vector_store import ChunkRecord, EmbeddingModelMismatch, VectorStore

log = logging.getLogger("app.ingest")

# A queue that never empties must not hold pending vector deletions back longer than this.
SWEEP_EVERY_SECONDS = 60.0


class JobLost(Exception):
    """The document was deleted, reindexed or taken over while we worked on it."""


class IngestWorker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        embedder: Embedder,
        store: VectorStore,
        sandbox: Sandbox,
        name: str | None = None,
    ):
        self.settings = settings
        self.db = db
        self.embedder = embedder
        self.store = store
        self.sandbox = sandbox
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.wakeup = threading.Event()
        self._sweep_due = time.monotonic() + SWEEP_EVERY_SECONDS

    # --- loop ---
    def run(self, stop: threading.Event) -> None:
        log.info("ingest worker started", extra={"worker": self.name})
        while not stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # the loop must survive anything (e.g. the database restarting)
                log.exception("ingest worker iteration failed", extra={"worker": self.name})
                worked = False
            if not worked:
                self.wakeup.wait(self.settings.INGEST_POLL_SECONDS)
                self.wakeup.clear()
        log.info("ingest worker stopped", extra={"worker": self.name})

    def run_once(self) -> bool:
        """Process one queued document; when there is none, settle pending vector deletions.
        False when there was nothing to do."""
        if time.monotonic() >= self._sweep_due:
            self.sweep()
        claim = self.claim()
        if claim is None:
            return self.sweep() > 0
        self.process(claim)
        return True

    def claim(self) -> queue.Claim | None:
        return queue.claim_next(
            self.db,
            self.name,
            self.settings.INGEST_LEASE_SECONDS,
            self.settings.INGEST_MAX_ATTEMPTS,
            max_per_customer=self.settings.INGEST_MAX_PER_CUSTOMER,
            rebuild=self.store.delete_chatbot,
        )

    def sweep(self) -> int:
        """Delete the vectors that deletions left behind (the store was unavailable)."""
        self._sweep_due = time.monotonic() + SWEEP_EVERY_SECONDS
        return deletions.sweep_deletions(self.db, self.store)

    # --- one document ---
    def process(self, claim: queue.Claim) -> None:
        started = time.perf_counter()
        extra = {"document_id": str(claim.document_id), "worker": self.name}
        try:
            chunks, pages = self._chunks(claim)
            self._store(claim, chunks)
        except JobLost:
            self._drop(claim)
            log.info("document dropped while processing", extra=extra)
            return
        except ExtractionError as exc:
            self._fail(claim, str(exc), retry=False)
            return
        except ExtractorUnavailable as exc:
            self._fail(claim, str(exc), retry=True)
            return
        except EmbeddingModelMismatch as exc:
            self._fail(claim, f"{exc}.", retry=False)
            return
        except Exception as exc:
            log.exception("document processing failed", extra=extra)
            self._fail(claim, f"Processing failed unexpectedly ({type(exc).__name__}).", retry=True)
            return
        metadata = {
            "pages": pages,
            "embedding_model": self.embedder.model_name,
            "seconds": round(time.perf_counter() - started, 3),
        }
        if not queue.complete(self.db, claim.document_id, self.name, len(chunks), metadata):
            self._drop(claim)
            return
        INGESTED.labels("ready").inc()
        CHUNKS.inc(len(chunks))
        log.info("document ready", extra={**extra, "chunks": len(chunks), **metadata})

    def _chunks(self, claim: queue.Claim) -> tuple[list[Chunk], int | None]:
        path = self.settings.UPLOAD_DIR / claim.file_path
        if not Path(path).is_file():
            raise ExtractionError("The stored file is missing; upload the document again.")
        sections = self.sandbox.extract(path, claim.file_type)
        size = self.settings.CHUNK_SIZE or self.embedder.chunk_budget()
        overlap = (
            self.settings.CHUNK_OVERLAP if self.settings.CHUNK_OVERLAP is not None else size // 8
        )
        chunks = chunk_sections(
            sections,
            chunk_size=size,
            chunk_overlap=min(overlap, size // 2),
            length_function=self.embedder.token_length,
        )
        if not chunks:
            raise ExtractionError(MSG_EMPTY)
        pages = max((s.page for s in sections if s.page is not None), default=None)
        return chunks, pages

    def _store(self, claim: queue.Claim, chunks: list[Chunk]) -> None:
        # A retried job may have stored part of its vectors already.
        self.store.delete_document(claim.chatbot_id, claim.document_id)
        self._store_passages(claim, chunks)
        step = max(4 * self.embedder.batch_size, 32)
        model, dimension = self.embedder.model_name, self.embedder.dimension
        for start in range(0, len(chunks), step):
            batch = chunks[start : start + step]
            vectors = self.embedder.embed_passages([c.text for c in batch])
            self.store.add(
                claim.chatbot_id,
                claim.customer_id,
                model,
                dimension,
                [self._record(claim, c, v) for c, v in zip(batch, vectors, strict=True)],
            )
            done = (start + len(batch)) / len(chunks)
            if not queue.heartbeat(
                self.db, claim.document_id, self.name, done, self.settings.INGEST_LEASE_SECONDS
            ):
                raise JobLost()

    def _store_passages(self, claim: queue.Claim, chunks: list[Chunk]) -> None:
        """The lexical index's rows, all in one transaction (a deleted document's insert fails
        on its foreign key and the job is dropped)."""
        with self.db.session() as session:
            replace_passages(
                session,
                claim.chatbot_id,
                claim.document_id,
                [PassageText(c.index, c.page, c.text) for c in chunks],
            )

    @staticmethod
    def _record(claim: queue.Claim, chunk: Chunk, vector: list[float]) -> ChunkRecord:
        metadata: dict[str, str | int | float | bool] = {
            "document_id": str(claim.document_id),
            "chatbot_id": str(claim.chatbot_id),
            "filename": claim.filename,
            "chunk_index": chunk.index,
        }
        if chunk.page is not None:
            metadata["page"] = chunk.page
        return ChunkRecord(
            id=f"{claim.document_id}:{chunk.index}",
            text=chunk.text,
            embedding=vector,
            metadata=metadata,
        )

    def _drop(self, claim: queue.Claim) -> None:
        """Clean up after a job we lost: vectors of a deleted document, the collection of a
        deleted chatbot (our late writes may have recreated it); nothing of a document that
        another worker or a reindex now owns."""
        document_exists, chatbot_exists = queue.job_state(self.db, claim)
        if document_exists:
            return
        document_id = claim.document_id if chatbot_exists else None
        if not self._delete_vectors(claim, document_id):
            deletions.record_deletion(self.db, claim.chatbot_id, document_id)

    def _fail(self, claim: queue.Claim, reason: str, *, retry: bool) -> None:
        """Record the failure even when the vector store is down: what this attempt wrote is
        then queued for deletion, and the row never stays `processing`."""
        vectors_left = not self._delete_vectors(claim, claim.document_id)
        status = queue.fail(
            self.db,
            claim.document_id,
            self.name,
            reason,
            retry=retry,
            max_attempts=self.settings.INGEST_MAX_ATTEMPTS,
            vectors_left=vectors_left,
        )
        if status is None and vectors_left:  # the job was lost meanwhile (e.g. deleted)
            self._drop(claim)
        INGESTED.labels(str(status.value) if status else "dropped").inc()
        level = logging.WARNING if status == DocumentStatus.failed else logging.INFO
        log.log(
            level,
            "document not ingested",
            extra={"document_id": str(claim.document_id), "status": str(status), "reason": reason},
        )

    def _delete_vectors(self, claim: queue.Claim, document_id: uuid.UUID | None) -> bool:
        """Delete now; False (logged) when the store is unavailable."""
        try:
            deletions.remove_vectors(self.store, claim.chatbot_id, document_id)
        except Exception as exc:  # the store's errors are many (connection, HTTP, Chroma)
            log.warning(
                "could not delete vectors",
                extra={
                    "document_id": str(claim.document_id),
                    "worker": self.name,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            return False
        return True


class WorkerPool:
    """Worker threads inside one process, stopped together."""

    def __init__(self, workers: list[IngestWorker]):
        self.workers = workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for worker in self.workers:
            thread = threading.Thread(
                target=worker.run, args=(self._stop,), name=f"ingest-{worker.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        for worker in self.workers:
            worker.wakeup.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout)

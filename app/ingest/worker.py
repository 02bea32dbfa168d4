"""The ingestion worker: claim documents, extract, chunk, embed, store, mark them ready.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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


@dataclass(eq=False)  # compared and hashed by identity
class Job:
    """A claimed document on its way: its chunks once extracted, how many are stored."""

    claim: queue.Claim
    started: float
    chunks: list[Chunk] = field(default_factory=list)
    pages: int | None = None
    stored: int = 0

    @property
    def progress(self) -> float:
        return self.stored / len(self.chunks) if self.chunks else 0.0


def lower_thread_priority(nice: int, idle: bool = False) -> None:
    """Run this thread, and the threads and processes it starts from now on (the embedding
    runtime's threads, extraction), at `nice` (Linux: per thread), and with `idle` under
    SCHED_IDLE: then they get a core only when no ordinary thread wants it (the question's
    threads, PostgreSQL's), not merely a smaller share of it. Passages are embedded with the
    CPU that questions leave, in the API's process or beside it on the same machine."""
    tid = threading.get_native_id()
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, max(current, nice))
        except OSError as exc:
            log.warning("cannot lower the ingest worker's CPU priority", extra={"reason": str(exc)})
    if idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            log.warning("cannot run the ingest worker under SCHED_IDLE", extra={"reason": str(exc)})


class IngestWorker:
    """Claims a turn of queued documents (several small ones of one customer at once, up to
    INGEST_BATCH_DOCUMENTS / INGEST_BATCH_BYTES), extracts and chunks each, embeds their
    chunks in shared batches, writes each batch to Chroma at once (one write per chatbot)
    and completes each document in its own transaction. In `run`, the next turn is claimed
    and extracted while this one is embedded (INGEST_PREFETCH)."""

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
        # Documents of the next turn, claimed ahead: their leases are renewed with this turn's.
        self._ahead: set[uuid.UUID] = set()
        self._ahead_lock = threading.Lock()

    # --- loop ---
    def run(self, stop: threading.Event) -> None:
        lower_thread_priority(self.settings.INGEST_NICE, self.settings.INGEST_SCHED_IDLE)
        log.info("ingest worker started", extra={"worker": self.name})
        ahead: Future[list[Job] | None] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix=f"prefetch-{self.name}") as prefetch:
            while not stop.is_set():
                pending, ahead = ahead, None
                try:
                    worked, ahead = self._step(
                        pending, prefetch if self.settings.INGEST_PREFETCH else None
                    )
                except Exception:  # the loop must survive anything (e.g. the database restarting)
                    log.exception("ingest worker iteration failed", extra={"worker": self.name})
                    worked = False
                if not worked:
                    self.wakeup.wait(self.settings.INGEST_POLL_SECONDS)
                    self.wakeup.clear()
            if ahead is not None:
                self._give_back(ahead)
        log.info("ingest worker stopped", extra={"worker": self.name})

    def _step(
        self, ahead: Future[list[Job] | None] | None, prefetch: ThreadPoolExecutor | None
    ) -> tuple[bool, Future[list[Job] | None] | None]:
        """One turn: the prefetched one, or one claimed now. Returns (worked, the next turn
        being prepared meanwhile)."""
        if time.monotonic() >= self._sweep_due:
            self.sweep()
        jobs = ahead.result() if ahead is not None else self.prepare()
        if jobs is None:
            return self.sweep() > 0, None
        following = prefetch.submit(self.prepare, ahead=True) if prefetch is not None else None
        try:
            self.finish(jobs)
        except BaseException:
            if following is not None:
                self._give_back(following)
            raise
        return True, following

    def run_once(self) -> bool:
        """Process one turn of queued documents (nothing is left claimed afterwards); when
        there is none, settle pending vector deletions. False when there was nothing to do."""
        worked, _ = self._step(None, None)
        return worked

    def claim(self) -> queue.Claim | None:
        """One document alone (see `claim_batch`)."""
        claims = self._claim(1)
        return claims[0] if claims else None

    def claim_batch(self) -> list[queue.Claim]:
        return self._claim(self.settings.INGEST_BATCH_DOCUMENTS)

    def _claim(self, max_documents: int) -> list[queue.Claim]:
        return queue.claim_batch(
            self.db,
            self.name,
            self.settings.INGEST_LEASE_SECONDS,
            self.settings.INGEST_MAX_ATTEMPTS,
            max_per_customer=self.settings.INGEST_MAX_PER_CUSTOMER,
            max_documents=max_documents,
            max_bytes=self.settings.INGEST_BATCH_BYTES,
            rebuild=self.store.delete_chatbot,
        )

    def sweep(self) -> int:
        """Delete the vectors that deletions left behind (the store was unavailable)."""
        self._sweep_due = time.monotonic() + SWEEP_EVERY_SECONDS
        return deletions.sweep_deletions(self.db, self.store)

    def _give_back(self, ahead: Future[list[Job] | None]) -> None:
        """A prepared turn this worker will not process (it stops): queued again at once."""
        try:
            jobs = ahead.result()
        except Exception:  # its claims, if any, come back when their leases expire
            log.exception("prefetching failed", extra={"worker": self.name})
            return
        if jobs:
            queue.release(self.db, [job.claim.document_id for job in jobs], self.name)

    # --- one turn ---
    def process(self, claim: queue.Claim) -> None:
        """Process one claimed document."""
        self.finish(self.extract([claim]))

    def prepare(self, *, ahead: bool = False) -> list[Job] | None:
        """Claim a turn and extract its documents; None when nothing was claimed. `ahead`:
        while another turn is processed, which renews these leases too."""
        claims = self.claim_batch()
        if ahead:
            with self._ahead_lock:
                self._ahead = {claim.document_id for claim in claims}
        return self.extract(claims) if claims else None

    def extract(self, claims: list[queue.Claim]) -> list[Job]:
        """Extract and chunk each claimed document (one that cannot be is failed alone), and
        clear what an earlier attempt of the others may have stored."""
        jobs: list[Job] = []
        for claim in claims:
            job = Job(claim, time.perf_counter())
            try:
                job.chunks, job.pages = self._chunks(claim)
            except ExtractionError as exc:
                self._fail(claim, str(exc), retry=False)
                continue
            except ExtractorUnavailable as exc:
                self._fail(claim, str(exc), retry=True)
                continue
            except Exception as exc:
                self._fail_unexpectedly([job], exc)
                continue
            jobs.append(job)
        for chatbot_jobs in _by_chatbot(jobs).values():
            # A retried job may have stored part of its vectors already.
            try:
                self.store.delete_documents(
                    chatbot_jobs[0].claim.chatbot_id, [j.claim.document_id for j in chatbot_jobs]
                )
                for job in chatbot_jobs:  # the lexical index, before any vector
                    self._store_passages(job.claim, job.chunks)
            except Exception as exc:
                self._fail_unexpectedly(chatbot_jobs, exc)
                jobs = [j for j in jobs if j not in chatbot_jobs]
        return jobs

    def finish(self, jobs: list[Job]) -> None:
        """Embed the jobs' chunks in shared steps of max(4 x batch, 32), store each step,
        renew every lease and record progress after it; complete each document as soon as
        its last chunk is stored."""
        with self._ahead_lock:
            self._ahead -= {job.claim.document_id for job in jobs}
        live = self._renew(jobs)  # prefetched leases are renewed before the work starts
        pieces = [(job, chunk) for job in live for chunk in job.chunks]
        step = max(4 * self.embedder.batch_size, 32)
        for start in range(0, len(pieces), step):
            part = [(job, chunk) for job, chunk in pieces[start : start + step] if job in live]
            if not part:
                continue
            stored = self._store(part, live)
            for job in stored:
                job.stored += sum(1 for j, _ in part if j is job)
            live = self._renew(live)
            for job in [j for j in live if j.stored == len(j.chunks)]:
                self._complete(job)
                live.remove(job)

    def _renew(self, jobs: list[Job]) -> list[Job]:
        """Progress and leases of the jobs; those no longer ours (deleted, reindexed, taken
        over) are dropped."""
        with self._ahead_lock:
            waiting = dict.fromkeys(self._ahead, 0.0)
        if not jobs and not waiting:
            return []
        ours = queue.heartbeats(
            self.db,
            self.name,
            {**waiting, **{job.claim.document_id: job.progress for job in jobs}},
            self.settings.INGEST_LEASE_SECONDS,
        )
        for job in jobs:
            if job.claim.document_id not in ours:
                self._drop(job.claim)
                log.info(
                    "document dropped while processing",
                    extra={"document_id": str(job.claim.document_id), "worker": self.name},
                )
        return [job for job in jobs if job.claim.document_id in ours]

    def _store(self, part: list[tuple[Job, Chunk]], live: list[Job]) -> set[Job]:
        """Embed and write one step; the jobs whose chunks in it are stored. A job that
        fails leaves `live` (failed or retried alone)."""
        vectors = self._embed(part, live)
        model, dimension = self.embedder.model_name, self.embedder.dimension
        written: set[Job] = set()
        groups: dict[uuid.UUID, list[tuple[Job, Chunk, list[float]]]] = {}
        for (job, chunk), vector in zip(part, vectors, strict=True):
            if vector is not None and job in live:
                groups.setdefault(job.claim.chatbot_id, []).append((job, chunk, vector))
        for items in groups.values():
            jobs = list(dict.fromkeys(job for job, _, _ in items))
            first = jobs[0].claim
            try:
                self.store.add(
                    first.chatbot_id,
                    first.customer_id,
                    model,
                    dimension,
                    [_record(job.claim, chunk, vector) for job, chunk, vector in items],
                )
            except EmbeddingModelMismatch as exc:
                for job in jobs:
                    self._fail(job.claim, f"{exc}.", retry=False)
                    live.remove(job)
                continue
            except Exception as exc:
                self._fail_unexpectedly(jobs, exc)
                for job in jobs:
                    live.remove(job)
                continue
            written.update(jobs)
        return written

    def _embed(self, part: list[tuple[Job, Chunk]], live: list[Job]) -> list[list[float] | None]:
        """The step's vectors in one call; if it fails, each job's own chunks again, so the
        cause fails alone (None for the chunks of a job that failed)."""
        try:
            return list(self.embedder.embed_passages([chunk.text for _, chunk in part]))
        except Exception:
            log.warning("shared embedding batch failed; embedding its documents one by one")
        vectors: list[list[float] | None] = [None] * len(part)
        for job in dict.fromkeys(job for job, _ in part):
            at = [i for i, (j, _) in enumerate(part) if j is job]
            try:
                own = self.embedder.embed_passages([part[i][1].text for i in at])
            except Exception as exc:
                self._fail_unexpectedly([job], exc)
                live.remove(job)
                continue
            for i, vector in zip(at, own, strict=True):
                vectors[i] = vector
        return vectors

    def _complete(self, job: Job) -> None:
        claim = job.claim
        metadata = {
            "pages": job.pages,
            "embedding_model": self.embedder.model_name,
            "seconds": round(time.perf_counter() - job.started, 3),
        }
        if not queue.complete(self.db, claim.document_id, self.name, len(job.chunks), metadata):
            self._drop(claim)
            return
        INGESTED.labels("ready").inc()
        CHUNKS.inc(len(job.chunks))
        log.info(
            "document ready",
            extra={
                "document_id": str(claim.document_id),
                "worker": self.name,
                "chunks": len(job.chunks),
                **metadata,
            },
        )

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
            strategy=self.settings.CHUNKING,
            min_size=self.settings.CHUNK_MIN_SIZE,
        )
        if not chunks:
            raise ExtractionError(MSG_EMPTY)
        pages = max((s.page for s in sections if s.page is not None), default=None)
        return chunks, pages

    def _store_passages(self, claim: queue.Claim, chunks: list[Chunk]) -> None:
        """The lexical index's rows, all in one transaction (a deleted document's insert fails
        on its foreign key and the job is dropped)."""
        with self.db.session() as session:
            replace_passages(
                session,
                claim.chatbot_id,
                claim.document_id,
                [PassageText(c.index, c.page, c.text, c.heading) for c in chunks],
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

    def _fail_unexpectedly(self, jobs: list[Job], exc: Exception) -> None:
        for job in jobs:
            log.error(
                "document processing failed",
                exc_info=exc,
                extra={"document_id": str(job.claim.document_id), "worker": self.name},
            )
            self._fail(
                job.claim, f"Processing failed unexpectedly ({type(exc).__name__}).", retry=True
            )

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


def _by_chatbot(jobs: list[Job]) -> dict[uuid.UUID, list[Job]]:
    groups: dict[uuid.UUID, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.claim.chatbot_id, []).append(job)
    return groups


def _record(claim: queue.Claim, chunk: Chunk, vector: list[float]) -> ChunkRecord:
    metadata: dict[str, str | int | float | bool] = {
        "document_id": str(claim.document_id),
        "chatbot_id": str(claim.chatbot_id),
        "filename": claim.filename,
        "chunk_index": chunk.index,
    }
    if chunk.page is not None:
        metadata["page"] = chunk.page
    if chunk.heading:
        metadata["heading"] = chunk.heading
    return ChunkRecord(
        id=f"{claim.document_id}:{chunk.index}",
        text=chunk.text,
        embedding=vector,
        metadata=metadata,
    )


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

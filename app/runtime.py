"""Process-wide clients, built once at startup: embedder, vector store, LLM, ingest workers."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, Request

from app.billing.service import sweep_reservations
from app.core.config import Settings
from app.core.db import Database
from app.core.ratelimit import RateLimiter
from app.ingest.worker import IngestWorker, WorkerPool
from app.rag.batching import QueryEmbedder
from app.rag.embeddings import Embedder
from app.rag.extract import Sandbox
from app.rag.llm import LLMClient
from app.rag.vector_store import VectorStore

log = logging.getLogger("app.runtime")

# How often each API process gives back reservations older than RESERVATION_TTL_SECONDS.
RESERVATION_SWEEP_SECONDS = 60.0


@dataclass
class Runtime:
    settings: Settings
    embedder: Embedder
    store: VectorStore
    llm: LLMClient
    limiter: RateLimiter
    sandbox: Sandbox
    workers: WorkerPool = field(default_factory=lambda: WorkerPool([]))
    _stopping: threading.Event = field(default_factory=threading.Event)
    _questions: QueryEmbedder | None = None

    @property
    def questions(self) -> QueryEmbedder:
        """The process's question batcher and cache, over the current embedder (a new one,
        with an empty cache, if the embedder was replaced)."""
        questions = self._questions
        if questions is None or questions.embedder is not self.embedder:
            questions = QueryEmbedder(
                self.embedder, cache_size=self.settings.QUERY_EMBEDDING_CACHE_SIZE
            )
            self._questions = questions
        return questions

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        embedder, store, sandbox = build_ingestion_clients(settings)
        return cls(
            settings=settings,
            embedder=embedder,
            store=store,
            llm=LLMClient(settings),
            limiter=RateLimiter(settings.RATE_LIMIT_STORAGE_URL, settings.RATE_LIMIT_KEY_PREFIX),
            sandbox=sandbox,
        )

    def start(self, db: Database) -> None:
        """Load the model in the background (so /health answers at once) and start the
        embedded ingest workers."""
        threading.Thread(target=self._load_model, name="embedder-load", daemon=True).start()
        self.start_workers(db)
        threading.Thread(
            target=self._sweep_reservations, args=(db,), name="reservation-sweep", daemon=True
        ).start()

    def _sweep_reservations(self, db: Database) -> None:
        """The backstop for answers whose process died before settling them: every
        RESERVATION_SWEEP_SECONDS, give back reservations older than RESERVATION_TTL_SECONDS."""
        while not self._stopping.wait(RESERVATION_SWEEP_SECONDS):
            try:
                with db.session() as session:
                    swept = sweep_reservations(session, self.settings.RESERVATION_TTL_SECONDS)
                if swept.reservations:
                    log.warning(
                        "gave back %d expired reservations (%d tokens)",
                        swept.reservations,
                        swept.tokens,
                    )
            except Exception:  # the loop must survive anything (e.g. the database restarting)
                log.exception("reservation sweep failed")

    def start_workers(self, db: Database) -> None:
        self.workers = WorkerPool(
            [
                IngestWorker(self.settings, db, self.embedder, self.store, self.sandbox)
                for _ in range(self.settings.INGEST_WORKERS)
            ]
        )
        self.workers.start()

    def _load_model(self) -> None:
        """Load, and after a failure retry every MODEL_RETRY_SECONDS until it works; meanwhile
        questions get 503 at once rather than each waiting for a slow load."""
        retry = False
        while not self._stopping.is_set():
            try:
                self.embedder.load(retry=retry)
                if retry:
                    log.info("embedding model loaded after a retry")
                return
            except Exception:
                log.exception(
                    "embedding model failed to load; retrying in %s s",
                    self.settings.MODEL_RETRY_SECONDS,
                )
            retry = True
            self._stopping.wait(self.settings.MODEL_RETRY_SECONDS)

    async def stop(self) -> None:
        self._stopping.set()
        self.workers.stop()
        await self.llm.aclose()
        await anyio.to_thread.run_sync(self.sandbox.close)

    def readiness_probes(self) -> dict[str, object]:
        return {
            "vector_store": self.store.heartbeat,
            "embedding_model": self.embedder.status,
            **self.limiter.probes(),
        }


def build_ingestion_clients(
    settings: Settings, *, answers_questions: bool = True
) -> tuple[Embedder, VectorStore, Sandbox]:
    """What every ingesting process builds once (the API's runtime, a standalone worker):
    the model, the store and the extraction sandbox (its processes start on first use).
    A process that never answers questions (a standalone worker) embeds passages on the
    model's one compiled copy rather than a second one of their own."""
    embedder = Embedder(
        settings.EMBEDDING_MODEL,
        settings.EMBEDDING_DEVICE,
        settings.EMBEDDING_BATCH_SIZE,
        backend=settings.EMBEDDING_BACKEND,
        quantize=settings.EMBEDDING_QUANTIZE,
        cache_dir=settings.EMBEDDING_CACHE_DIR,
        separate_passage_model=answers_questions,
    )
    store = VectorStore(
        path=None if settings.CHROMA_URL else settings.CHROMA_PATH,
        url=settings.CHROMA_URL,
        token=settings.CHROMA_AUTH_TOKEN,
        handle_cache_size=settings.CHROMA_HANDLE_CACHE_SIZE,
    )
    sandbox = Sandbox(
        timeout_s=settings.EXTRACT_TIMEOUT_SECONDS,
        max_memory_mb=settings.EXTRACT_MAX_MEMORY_MB,
        max_pages=settings.PDF_MAX_PAGES,
        max_chars=settings.MAX_EXTRACTED_CHARS,
    )
    return embedder, store, sandbox


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_limiter(request: Request) -> RateLimiter:
    runtime: Runtime = request.app.state.runtime
    return runtime.limiter


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]

"""Process-wide clients, built once at startup: embedder, vector store, LLM, ingest workers."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, Request

from app.core.config import Settings
from app.core.db import Database
from app.core.ratelimit import RateLimiter
from app.ingest.worker import IngestWorker, WorkerPool
from app.rag.embeddings import Embedder
from app.rag.extract import Sandbox
from app.rag.llm import LLMClient
from app.rag.vector_store import VectorStore

log = logging.getLogger("app.runtime")


@dataclass
class Runtime:
    settings: Settings
    embedder: Embedder
    store: VectorStore
    llm: LLMClient
    limiter: RateLimiter
    sandbox: Sandbox
    workers: WorkerPool = field(default_factory=lambda: WorkerPool([]))

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        embedder, store, sandbox = build_ingestion_clients(settings)
        return cls(
            settings=settings,
            embedder=embedder,
            store=store,
            llm=LLMClient(settings),
            limiter=RateLimiter(settings.RATE_LIMIT_STORAGE_URL),
            sandbox=sandbox,
        )

    def start(self, db: Database) -> None:
        """Load the model in the background (so /health answers at once) and start the
        embedded ingest workers."""
        threading.Thread(target=self._load_model, name="embedder-load", daemon=True).start()
        self.start_workers(db)

    def start_workers(self, db: Database) -> None:
        self.workers = WorkerPool(
            [
                IngestWorker(self.settings, db, self.embedder, self.store, self.sandbox)
                for _ in range(self.settings.INGEST_WORKERS)
            ]
        )
        self.workers.start()

    def _load_model(self) -> None:
        try:
            self.embedder.load()
        except Exception:
            log.exception("embedding model failed to load")

    async def stop(self) -> None:
        self.workers.stop()
        await self.llm.aclose()
        await anyio.to_thread.run_sync(self.sandbox.close)

    def readiness_probes(self) -> dict[str, object]:
        return {"vector_store": self.store.heartbeat, "embedding_model": self.embedder.status}


def build_ingestion_clients(settings: Settings) -> tuple[Embedder, VectorStore, Sandbox]:
    """What every ingesting process builds once (the API's runtime, a standalone worker):
    the model, the store and the extraction sandbox (its processes start on first use)."""
    embedder = Embedder(
        settings.EMBEDDING_MODEL, settings.EMBEDDING_DEVICE, settings.EMBEDDING_BATCH_SIZE
    )
    store = VectorStore(
        path=None if settings.CHROMA_URL else settings.CHROMA_PATH, url=settings.CHROMA_URL
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

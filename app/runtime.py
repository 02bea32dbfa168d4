"""Process-wide clients, built once at startup: embedder, vector store, LLM, ingest workers."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.core.db import Database
from app.ingest.worker import IngestWorker, WorkerPool
from app.rag.embeddings import Embedder
from app.rag.llm import LLMClient
from app.rag.vector_store import VectorStore

log = logging.getLogger("app.runtime")


@dataclass
class Runtime:
    settings: Settings
    embedder: Embedder
    store: VectorStore
    llm: LLMClient
    workers: WorkerPool = field(default_factory=lambda: WorkerPool([]))

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        return cls(
            settings=settings,
            embedder=Embedder(
                settings.EMBEDDING_MODEL, settings.EMBEDDING_DEVICE, settings.EMBEDDING_BATCH_SIZE
            ),
            store=VectorStore(
                path=None if settings.CHROMA_URL else settings.CHROMA_PATH,
                url=settings.CHROMA_URL,
            ),
            llm=LLMClient(settings),
        )

    def start(self, db: Database) -> None:
        """Load the model in the background (so /health answers at once) and start the
        embedded ingest workers."""
        threading.Thread(target=self._load_model, name="embedder-load", daemon=True).start()
        self.start_workers(db)

    def start_workers(self, db: Database) -> None:
        self.workers = WorkerPool(
            [
                IngestWorker(self.settings, db, self.embedder, self.store)
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

    def readiness_probes(self) -> dict[str, object]:
        return {"vector_store": self.store.heartbeat, "embedding_model": self.embedder.status}


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

"""Chroma: one client per process, one collection per chatbot.

We always pass our own vectors: Chroma's default embedding function would download a model at
run time and is not the model we chose. Each collection records the embedding model and
dimension it was built with; mixing models is refused (reindex instead).
"""

from __future__ import annotations

import logging
import resource
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import chromadb
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from app.core.errors import ServiceUnavailable

log = logging.getLogger("app.rag.vector_store")


class VectorStoreUnavailable(ServiceUnavailable):
    code = "vector_store_unavailable"
    default_detail = "The document store is unavailable right now; retry shortly."
    public_detail = "This chatbot cannot answer right now; please try again later."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "5"})


class EmbeddingModelMismatch(RuntimeError):
    def __init__(self, stored_model: str, current_model: str):
        self.stored_model = stored_model
        self.current_model = current_model
        super().__init__(
            f"this chatbot's documents were embedded with {stored_model!r} but the server now "
            f"uses {current_model!r}; reindex the chatbot (POST /api/chatbots/{{id}}/reindex)"
        )


@dataclass(frozen=True)
class ChunkRecord:
    id: str
    text: str
    embedding: list[float]
    metadata: dict[str, str | int | float | bool]


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    score: float  # cosine similarity, -1..1; after fusion, the fused score
    metadata: dict[str, Any]
    retrievers: tuple[str, ...] = ("dense",)  # which retrievers found it


def collection_name(chatbot_id: uuid.UUID) -> str:
    return f"chatbot_{chatbot_id.hex}"


# Collection handles kept by default: a handle costs a few KB, a miss one more Chroma call.
DEFAULT_HANDLE_CACHE_SIZE = 1000


class HandleCache:
    """Collection handles, least recently used first out, so memory does not grow with the
    number of chatbots a long-lived process has ever answered for. Thread-safe."""

    def __init__(self, capacity: int):
        self.capacity = max(0, capacity)
        self._items: OrderedDict[uuid.UUID, Collection] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: uuid.UUID) -> Collection | None:
        with self._lock:
            handle = self._items.get(key)
            if handle is not None:
                self._items.move_to_end(key)
            return handle

    def put(self, key: uuid.UUID, handle: Collection) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = handle
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def pop(self, key: uuid.UUID) -> None:
        with self._lock:
            self._items.pop(key, None)


class VectorStore:
    def __init__(
        self,
        path: Path | None = None,
        url: str | None = None,
        token: str | None = None,
        handle_cache_size: int = DEFAULT_HANDLE_CACHE_SIZE,
    ):
        self._path, self._url, self._token = path, url, token
        self._client: ClientAPI | None = None
        # Creating a collection is not atomic across threads in the embedded client.
        self._create_lock = threading.Lock()
        self._client_lock = threading.Lock()
        # Collection handles, so a question costs one Chroma call. A handle goes stale when
        # the collection is dropped (possibly by another process): evicted on NotFoundError.
        self._handles = HandleCache(handle_cache_size)

    @property
    def client(self) -> ClientAPI:
        """Connected on first use, so a Chroma server that is down at startup makes /ready
        say so instead of stopping the process."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = _make_client(self._path, self._url, self._token)
        return self._client

    def heartbeat(self) -> str:
        self.client.heartbeat()
        return "ok"

    def _collection(self, chatbot_id: uuid.UUID, *, fresh: bool = False) -> Collection | None:
        handle = None if fresh else self._handles.get(chatbot_id)
        if handle is not None:
            return handle
        # Connected outside the `try`: the client says "could not connect" with a ValueError,
        # which must not pass for a missing collection (a deletion would seem done).
        client = self.client
        try:
            handle = client.get_collection(collection_name(chatbot_id), embedding_function=None)
        except (NotFoundError, ValueError):
            self._handles.pop(chatbot_id)
            return None
        self._handles.put(chatbot_id, handle)
        return handle

    def _collection_for_write(
        self, chatbot_id: uuid.UUID, customer_id: uuid.UUID, model: str, dimension: int
    ) -> Collection:
        metadata = {
            "hnsw:space": "cosine",
            "chatbot_id": str(chatbot_id),
            "customer_id": str(customer_id),
            "embedding_model": model,
            "embedding_dim": dimension,
        }
        name = collection_name(chatbot_id)
        with self._create_lock:
            collection = self.client.get_or_create_collection(
                name, metadata=metadata, embedding_function=None
            )
            if _model_differs(collection, model) and collection.count() == 0:
                # Empty (its documents were deleted): nothing to keep, so no reindex needed.
                self._handles.pop(chatbot_id)
                self.client.delete_collection(name)
                collection = self.client.create_collection(
                    name, metadata=metadata, embedding_function=None
                )
        _check_model(collection, model)
        return collection

    def add(
        self,
        chatbot_id: uuid.UUID,
        customer_id: uuid.UUID,
        model: str,
        dimension: int,
        records: Sequence[ChunkRecord],
    ) -> None:
        if not records:
            return
        collection = self._collection_for_write(chatbot_id, customer_id, model, dimension)
        collection.upsert(
            ids=[r.id for r in records],
            embeddings=[r.embedding for r in records],  # type: ignore[arg-type]
            documents=[r.text for r in records],
            metadatas=[r.metadata for r in records],
        )

    def query(self, chatbot_id: uuid.UUID, model: str, embedding: list[float], k: int) -> list[Hit]:
        """The top-k passages. A store that cannot be reached is a 503 for the asker (the
        reason goes to the log), never a 500."""
        try:
            return self._hits(chatbot_id, model, embedding, k)
        except EmbeddingModelMismatch:
            raise
        except Exception as exc:  # connection refused, timeouts, the server's HTTP errors
            log.warning("vector store query failed: %s: %s", type(exc).__name__, exc)
            raise VectorStoreUnavailable() from exc

    def _hits(self, chatbot_id: uuid.UUID, model: str, embedding: list[float], k: int) -> list[Hit]:
        collection = self._collection(chatbot_id)
        if collection is None or (_model_differs(collection, model) and collection.count() == 0):
            return []
        _check_model(collection, model)
        try:
            result = self._query(collection, embedding, k)
        except NotFoundError:  # dropped and maybe rebuilt since we took the handle
            collection = self._collection(chatbot_id, fresh=True)
            if collection is None:
                return []
            _check_model(collection, model)
            result = self._query(collection, embedding, k)
        ids = result["ids"][0]
        documents = (result.get("documents") or [[]])[0]
        metadatas = (result.get("metadatas") or [[]])[0]
        distances = (result.get("distances") or [[]])[0]
        return [
            Hit(id=i, text=d or "", score=1.0 - float(dist), metadata=dict(m or {}))
            for i, d, m, dist in zip(ids, documents, metadatas, distances, strict=False)
        ]

    @staticmethod
    def _query(collection: Collection, embedding: list[float], k: int) -> Any:
        return collection.query(
            query_embeddings=[embedding],  # type: ignore[arg-type]
            n_results=k,
            include=["documents", "metadatas", "distances"],
        )

    def stored_model(self, chatbot_id: uuid.UUID) -> str | None:
        collection = self._collection(chatbot_id, fresh=True)
        if collection is None:
            return None
        return str((collection.metadata or {}).get("embedding_model") or "") or None

    def count(self, chatbot_id: uuid.UUID, document_id: uuid.UUID | None = None) -> int:
        collection = self._collection(chatbot_id, fresh=True)
        if collection is None:
            return 0
        if document_id is None:
            return collection.count()
        return len(collection.get(where={"document_id": str(document_id)}, include=[])["ids"])

    def delete_document(self, chatbot_id: uuid.UUID, document_id: uuid.UUID) -> None:
        collection = self._collection(chatbot_id, fresh=True)
        if collection is not None:
            collection.delete(where={"document_id": str(document_id)})

    def delete_documents(self, chatbot_id: uuid.UUID, document_ids: Sequence[uuid.UUID]) -> None:
        """`delete_document` for several documents of one chatbot, in one call."""
        if len(document_ids) == 1:
            self.delete_document(chatbot_id, document_ids[0])
            return
        collection = self._collection(chatbot_id, fresh=True)
        if collection is not None and document_ids:
            ids: list[str | int | float | bool] = [str(d) for d in document_ids]
            among: dict[Literal["$in", "$nin"], list[str | int | float | bool]] = {"$in": ids}
            collection.delete(where={"document_id": among})

    def delete_chatbot(self, chatbot_id: uuid.UUID) -> None:
        self._handles.pop(chatbot_id)
        client = self.client  # outside the `try`, as in `_collection`
        try:
            client.delete_collection(collection_name(chatbot_id))
        except (NotFoundError, ValueError):
            pass


def _model_differs(collection: Collection, model: str) -> bool:
    stored = (collection.metadata or {}).get("embedding_model")
    return bool(stored) and stored != model


def _check_model(collection: Collection, model: str) -> None:
    if _model_differs(collection, model):
        stored = (collection.metadata or {}).get("embedding_model")
        raise EmbeddingModelMismatch(str(stored), model)


def _make_client(path: Path | None, url: str | None, token: str | None = None) -> ClientAPI:
    settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if url:
        parts = urlsplit(url)
        # A bearer token on every request, for whatever guards the server (an authenticating
        # proxy in front of it, or a hosted Chroma); the server itself has no users.
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return chromadb.HttpClient(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (443 if parts.scheme == "https" else 8000),
            ssl=parts.scheme == "https",
            headers=headers,
            settings=settings,
        )
    assert path is not None
    path.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit()
    return chromadb.PersistentClient(path=str(path), settings=settings)


# Embedded Chroma keeps every collection's vector index open (5 files each) in a cache of
# (open-files soft limit) / 5 collections, read when the client is built. An index evicted
# before it reached disk (a small collection: below its sync threshold) is not found again
# until a restart ("Nothing found on disk"), so the cache must hold every collection: at the
# usual soft limit of 1024 that is 204 chatbots; at 65536, 13107. The hard limit is the
# operator's ceiling.
OPEN_FILES_WANTED = 65536


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise this process's open-files soft limit towards `wanted` (never above the hard
    limit, never down); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)
            return soft
        log.info("open-files limit raised from %d to %d for embedded Chroma", soft, target)
        return target
    return soft

"""Vector deletions that cannot be lost: a `PendingDeletion` row commits with the deletion of
a document or chatbot, the request deletes the vectors right after, and ingest workers sweep
what the vector store could not do at once (it was down), backing off between attempts."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from functools import partial

from sqlalchemy import Connection, Engine, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.db import Database, after_commit
from app.ingest.queue import RETRY_BACKOFF_SECONDS
from app.models import Document, DocumentStatus, PendingDeletion
from app.models.base import utcnow
from app.rag.vector_store import VectorStore

log = logging.getLogger("app.ingest")

# Pending deletions one sweep settles at most (one vector-store call each).
SWEEP_BATCH = 20
# After a failed attempt a pending deletion waits RETRY_BACKOFF_SECONDS, doubling up to this.
DELETION_MAX_BACKOFF_SECONDS = 600


def delete_vectors(
    session: Session,
    store: VectorStore,
    chatbot_id: uuid.UUID,
    document_id: uuid.UUID | None = None,
) -> None:
    """Delete a deleted document's vectors (or a deleted chatbot's whole collection), durably:
    a `PendingDeletion` row commits with the deletion. Once that has committed, the vectors
    go at once and the row with them, in a short transaction of its own (the caller's is
    over); if the store is unavailable the row stays and the workers' sweep retries it, so
    the deletion still succeeds."""
    pending = PendingDeletion(chatbot_id=chatbot_id, document_id=document_id)
    session.add(pending)
    session.flush()
    after_commit(
        session,
        partial(_delete_now, session.get_bind(), store, pending.id, chatbot_id, document_id),
    )


def remove_vectors(
    store: VectorStore, chatbot_id: uuid.UUID, document_id: uuid.UUID | None
) -> None:
    """A document's vectors, or (document_id None) the chatbot's whole collection."""
    if document_id is None:
        store.delete_chatbot(chatbot_id)
    else:
        store.delete_document(chatbot_id, document_id)


def _delete_now(
    bind: Engine | Connection,
    store: VectorStore,
    pending_id: uuid.UUID,
    chatbot_id: uuid.UUID,
    document_id: uuid.UUID | None,
) -> None:
    extra = {"chatbot_id": str(chatbot_id), "document_id": str(document_id)}
    try:
        remove_vectors(store, chatbot_id, document_id)
    except Exception as exc:  # best effort: the pending row is the durable part
        log.warning(
            "vector deletion left to the ingest workers", extra={**extra, "error": _describe(exc)}
        )
        return
    try:
        with Session(bind) as session, session.begin():
            # A worker sweeping this row right now deletes it itself: don't wait for it.
            mine = session.scalar(
                select(PendingDeletion.id)
                .where(PendingDeletion.id == pending_id)
                .with_for_update(skip_locked=True)
            )
            if mine is not None:
                session.execute(delete(PendingDeletion).where(PendingDeletion.id == pending_id))
    except SQLAlchemyError as exc:  # the sweep deletes it later (deleting twice is harmless)
        log.warning(
            "pending deletion left to the ingest workers", extra={**extra, "error": _describe(exc)}
        )


def record_deletion(db: Database, chatbot_id: uuid.UUID, document_id: uuid.UUID | None) -> None:
    """Vectors the store could not delete now, left to the sweep."""
    with db.session() as session:
        session.add(PendingDeletion(chatbot_id=chatbot_id, document_id=document_id))


def sweep_deletions(db: Database, store: VectorStore, limit: int = SWEEP_BATCH) -> int:
    """Settle due pending deletions; how many were settled. Stops at the first store error
    (the store is probably down): that row waits longer each time."""
    settled = 0
    while settled < limit and _settle_one(db, store):
        settled += 1
    return settled


def _settle_one(db: Database, store: VectorStore) -> bool:
    # One row per transaction: on SQLite a longer one would hold the database's write lock
    # across vector-store calls. On PostgreSQL the row stays locked during the call, so
    # workers never repeat each other's work.
    now = utcnow()
    with db.session() as session:
        due = session.execute(
            select(
                PendingDeletion.id,
                PendingDeletion.chatbot_id,
                PendingDeletion.document_id,
                PendingDeletion.attempts,
            )
            .where(or_(PendingDeletion.not_before.is_(None), PendingDeletion.not_before <= now))
            .order_by(PendingDeletion.requested_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if due is None:
            return False
        pending_id, chatbot_id, document_id, attempts = due
        orphaned = document_id is None or _orphaned(session, document_id)
        try:
            if orphaned:
                remove_vectors(store, chatbot_id, document_id)
        except Exception as exc:  # the store's errors are many (connection, HTTP, Chroma)
            session.execute(
                update(PendingDeletion)
                .where(PendingDeletion.id == pending_id)
                .values(
                    attempts=attempts + 1,
                    not_before=now + _deletion_backoff(attempts + 1),
                    last_error=_describe(exc)[:2000],
                )
            )
            log.warning(
                "vector deletion failed; retried later",
                extra={
                    "chatbot_id": str(chatbot_id),
                    "attempts": attempts + 1,
                    "error": _describe(exc),
                },
            )
            return False
        session.execute(delete(PendingDeletion).where(PendingDeletion.id == pending_id))
        return True


def _orphaned(session: Session, document_id: uuid.UUID) -> bool:
    """A document's vectors are garbage once it is gone or failed. Queued, processing or
    ready again (a retry, a reindex): a later attempt owns them, having cleared the old ones
    before writing, so the request is obsolete. Locked (FOR SHARE on PostgreSQL) so that no
    retry starts on it while we delete."""
    status = session.scalar(
        select(Document.status).where(Document.id == document_id).with_for_update(read=True)
    )
    return status is None or status == DocumentStatus.failed


def _deletion_backoff(attempts: int) -> timedelta:
    seconds = RETRY_BACKOFF_SECONDS * 2 ** min(attempts - 1, 10)
    return timedelta(seconds=min(seconds, DELETION_MAX_BACKOFF_SECONDS))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def pending_count(session: Session) -> int:
    """Deletions waiting for the vector store (the operator's `queue status`)."""
    return int(session.scalar(select(func.count()).select_from(PendingDeletion)) or 0)

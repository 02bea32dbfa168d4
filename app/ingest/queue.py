"""The ingestion queue is the `documents` table: a job commits with its document.

Workers claim rows with `FOR UPDATE SKIP LOCKED` on PostgreSQL (so workers on many machines
share the queue); on SQLite the guarded UPDATE alone decides. A claim is a lease: the worker
renews it as it makes progress; a row whose lease expired (its worker died) is claimed again,
until INGEST_MAX_ATTEMPTS claims have been spent.

Claims are fair between customers: the customer served longest ago goes first, and one that
INGEST_MAX_PER_CUSTOMER workers are busy with waits, so a tenant's backlog never holds up the
others. A turn may take several small documents of its customer at once (a batch, bounded by
INGEST_BATCH_DOCUMENTS and INGEST_BATCH_BYTES), which the worker embeds together; each of them
keeps its own lease, attempts and completion. (Vector deletions, which workers also sweep, are
in deletions.py.)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Result,
    Select,
    and_,
    distinct,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.core.db import Database
from app.models import Chatbot, Customer, Document, DocumentStatus, PendingDeletion
from app.models.base import utcnow

log = logging.getLogger("app.ingest")


def interrupted_message(attempts: int) -> str:
    times = "once" if attempts == 1 else f"{attempts} times"
    return (
        f"Processing was interrupted {times} (the worker stopped or crashed); delete the "
        "document and upload it again, or contact support if it keeps happening."
    )


# A transient failure (e.g. the vector store restarting) is retried after this many seconds
# times the attempts so far, instead of burning every attempt in the same outage.
RETRY_BACKOFF_SECONDS = 10


@dataclass(frozen=True)
class Claim:
    document_id: uuid.UUID
    chatbot_id: uuid.UUID
    customer_id: uuid.UUID
    filename: str
    file_path: str
    file_type: str
    attempts: int


def _claimable(now: Any) -> ColumnElement[bool]:
    # A queued row may carry a not-before time (lease_expires_at) after a transient error.
    return or_(
        and_(
            Document.status == DocumentStatus.queued,
            or_(Document.lease_expires_at.is_(None), Document.lease_expires_at < now),
        ),
        and_(Document.status == DocumentStatus.processing, Document.lease_expires_at < now),
    )


def _live(now: datetime) -> ColumnElement[bool]:
    """Being processed by a worker that is still alive."""
    return and_(Document.status == DocumentStatus.processing, Document.lease_expires_at >= now)


# Candidates tried per claim: another worker may take the one we picked between our
# lock-free choice and our lock.
CLAIM_TRIES = 5


def claim_next(
    db: Database,
    owner: str,
    lease_seconds: int,
    max_attempts: int,
    *,
    max_per_customer: int,
    rebuild: Callable[[uuid.UUID], None] | None = None,
) -> Claim | None:
    """Claim the next document alone (see `claim_batch`)."""
    claims = claim_batch(
        db,
        owner,
        lease_seconds,
        max_attempts,
        max_per_customer=max_per_customer,
        max_documents=1,
        max_bytes=0,
        rebuild=rebuild,
    )
    return claims[0] if claims else None


def claim_batch(
    db: Database,
    owner: str,
    lease_seconds: int,
    max_attempts: int,
    *,
    max_per_customer: int,
    max_documents: int,
    max_bytes: int,
    rebuild: Callable[[uuid.UUID], None] | None = None,
) -> list[Claim]:
    """Claim the next documents, fairly between customers: among those that fewer than
    `max_per_customer` workers are busy with, the customer served longest ago
    (`Customer.last_ingest_at`, never first), then its oldest document; then, in the same
    turn, the customer's next queued documents while there are at most `max_documents` and
    their sizes add up to at most `max_bytes` (a larger first document goes alone). Empty
    when there is nothing to claim.

    `rebuild(chatbot_id)` drops a collection whose chatbot asked for a reindex: it runs
    inside the claim's transaction, while the chatbot's row is locked, so no other worker
    writes vectors of that chatbot before the old ones are gone (and if it fails, the claims
    and the request are all kept for the next try)."""
    now = utcnow()
    with db.session() as session:
        _fail_exhausted(session, now, max_attempts)
        skipped_documents: list[uuid.UUID] = []
        skipped_customers: list[uuid.UUID] = []
        for _ in range(CLAIM_TRIES):
            candidate = session.execute(
                _candidate(
                    now, max_attempts, max_per_customer, skipped_documents, skipped_customers
                )
            ).first()
            if candidate is None:
                return []
            document_id, customer_id = candidate
            if not _take_turn(session, customer_id, now, max_per_customer):
                skipped_customers.append(customer_id)
            elif not _take_document(session, document_id, owner, now, lease_seconds, max_attempts):
                skipped_documents.append(document_id)
            else:
                more = _take_more(
                    session,
                    document_id,
                    customer_id,
                    owner,
                    now,
                    lease_seconds,
                    max_attempts,
                    max_documents - 1,
                    max_bytes,
                )
                return _claimed(session, [document_id, *more], customer_id, now, rebuild)
        return []


def _fail_exhausted(session: Session, now: datetime, max_attempts: int) -> None:
    """Rows whose worker died too often end `failed` instead of looping forever; what the
    dead workers wrote is queued for deletion."""
    exhausted = session.execute(
        select(Document.id, Document.chatbot_id, Document.attempts)
        .where(
            Document.status == DocumentStatus.processing,
            Document.lease_expires_at < now,
            Document.attempts >= max_attempts,
        )
        .with_for_update(skip_locked=True)
    ).all()
    for dead_id, chatbot_id, attempts in exhausted:
        ended = session.execute(
            update(Document)
            .where(Document.id == dead_id, Document.status == DocumentStatus.processing)
            .values(
                status=DocumentStatus.failed,
                error=interrupted_message(attempts),
                lease_owner=None,
                lease_expires_at=None,
                processed_at=now,
            )
        )
        if _rowcount(ended) == 1:
            session.add(PendingDeletion(chatbot_id=chatbot_id, document_id=dead_id))


def _candidate(
    now: datetime,
    max_attempts: int,
    max_per_customer: int,
    skipped_documents: list[uuid.UUID],
    skipped_customers: list[uuid.UUID],
) -> Select[uuid.UUID, uuid.UUID]:
    """The fair choice, read without locks (the customer's turn, then the document, are
    locked next). It reads only queued and processing rows (the status index), never the
    ready ones."""
    busy = (
        select(Chatbot.customer_id)
        .join(Document, Document.chatbot_id == Chatbot.id)
        .where(_live(now))
        .group_by(Chatbot.customer_id)
        .having(func.count(distinct(Document.lease_owner)) >= max_per_customer)
    )
    query = (
        select(Document.id, Chatbot.customer_id)
        .join(Chatbot, Chatbot.id == Document.chatbot_id)
        .join(Customer, Customer.id == Chatbot.customer_id)
        .where(
            _claimable(now),
            Document.attempts < max_attempts,
            Chatbot.customer_id.not_in(busy),
        )
        .order_by(Customer.last_ingest_at.asc().nulls_first(), Document.uploaded_at, Document.id)
        .limit(1)
    )
    if skipped_documents:
        query = query.where(Document.id.not_in(skipped_documents))
    if skipped_customers:
        query = query.where(Chatbot.customer_id.not_in(skipped_customers))
    return query


# Advisory locks taken by claims are (INGEST_LOCK_CLASS, a customer's key) on PostgreSQL.
INGEST_LOCK_CLASS = 0x1A6E57


def _take_turn(session: Session, customer_id: uuid.UUID, now: datetime, cap: int) -> bool:
    """Lock the customer's turn, then count the workers busy with its documents: two workers
    never both take the last free slot of one customer. False: another worker is claiming
    for it, or it is full. (A worker counts once however many of its documents it holds.)

    PostgreSQL: a transaction-scoped advisory lock, not the customer's row, which answers
    being charged update (their transactions lock the chatbot, then the customer: a claim
    holding the customer's row while it updates the chatbot could deadlock with them)."""
    if session.get_bind().dialect.name == "sqlite":
        # No row locks: a write takes the database's write lock, which serializes claims.
        session.execute(
            update(Customer)
            .where(Customer.id == customer_id)
            .values(last_ingest_at=Customer.last_ingest_at, updated_at=Customer.updated_at)
        )
    else:
        key = int.from_bytes(customer_id.bytes[:4], "big", signed=True)
        if not session.scalar(select(func.pg_try_advisory_xact_lock(INGEST_LOCK_CLASS, key))):
            return False
    running = session.scalar(
        select(func.count(distinct(Document.lease_owner)))
        .select_from(Document)
        .join(Chatbot, Chatbot.id == Document.chatbot_id)
        .where(Chatbot.customer_id == customer_id, _live(now))
    )
    return (running or 0) < cap


def _take_document(
    session: Session,
    document_id: uuid.UUID,
    owner: str,
    now: datetime,
    lease_seconds: int,
    max_attempts: int,
) -> bool:
    locked = session.scalar(
        select(Document.id)
        .where(Document.id == document_id, _claimable(now), Document.attempts < max_attempts)
        .with_for_update(skip_locked=True)
    )
    if locked is None:
        return False
    claimed = session.execute(
        update(Document)
        .where(Document.id == document_id, _claimable(now))
        .values(**_lease(owner, now, lease_seconds))
    )
    return _rowcount(claimed) == 1  # 0: another worker won (SQLite has no row locks)


def _lease(owner: str, now: datetime, lease_seconds: int) -> dict[str, Any]:
    return {
        "status": DocumentStatus.processing,
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "attempts": Document.attempts + 1,
        "progress": 0.0,
    }


def _take_more(
    session: Session,
    first_id: uuid.UUID,
    customer_id: uuid.UUID,
    owner: str,
    now: datetime,
    lease_seconds: int,
    max_attempts: int,
    room: int,
    max_bytes: int,
) -> list[uuid.UUID]:
    """The customer's next claimable documents that fit beside the first one (oldest first,
    while the turn is locked); those another worker holds locked are passed over."""
    if room <= 0:
        return []
    budget = max_bytes - (
        session.scalar(select(Document.size_bytes).where(Document.id == first_id)) or 0
    )
    if budget <= 0:
        return []
    rows = session.execute(
        select(Document.id, Document.size_bytes)
        .join(Chatbot, Chatbot.id == Document.chatbot_id)
        .where(
            Chatbot.customer_id == customer_id,
            _claimable(now),
            Document.attempts < max_attempts,
            Document.id != first_id,
            Document.size_bytes <= budget,
        )
        .order_by(Document.uploaded_at, Document.id)
        .limit(room)
        .with_for_update(of=Document, skip_locked=True)
    ).all()
    picked: list[uuid.UUID] = []
    for document_id, size in rows:
        if size > budget:
            break  # in upload order: a later small one waits for the next turn
        picked.append(document_id)
        budget -= size
    if not picked:
        return []
    taken = session.execute(
        update(Document)
        .where(Document.id.in_(picked), _claimable(now), Document.attempts < max_attempts)
        .values(**_lease(owner, now, lease_seconds))
        .returning(Document.id)
    )
    claimed = set(taken.scalars())  # SQLite: another worker may have won some
    return [document_id for document_id in picked if document_id in claimed]


def _claimed(
    session: Session,
    document_ids: list[uuid.UUID],
    customer_id: uuid.UUID,
    now: datetime,
    rebuild: Callable[[uuid.UUID], None] | None,
) -> list[Claim]:
    documents = {
        d.id: d for d in session.scalars(select(Document).where(Document.id.in_(document_ids)))
    }
    if rebuild is not None:
        for chatbot_id in dict.fromkeys(documents[i].chatbot_id for i in document_ids):
            flagged = session.execute(
                update(Chatbot)
                .where(Chatbot.id == chatbot_id, Chatbot.rebuild_pending.is_(True))
                .values(rebuild_pending=False)
            )
            if _rowcount(flagged) == 1:
                rebuild(chatbot_id)
    # Last, so the customer's row is locked only until the commit that follows (and after
    # the chatbot's, the order in which answers lock them). An ingestion turn is not a
    # change of the customer: updated_at stays.
    session.execute(
        update(Customer)
        .where(Customer.id == customer_id)
        .values(last_ingest_at=now, updated_at=Customer.updated_at)
    )
    return [
        Claim(
            document_id=document.id,
            chatbot_id=document.chatbot_id,
            customer_id=customer_id,
            filename=document.filename,
            file_path=document.file_path,
            file_type=document.file_type,
            attempts=document.attempts,
        )
        for document in (documents[i] for i in document_ids)
    ]


def _rowcount(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


def _owned(document_id: uuid.UUID, owner: str) -> ColumnElement[bool]:
    return and_(
        Document.id == document_id,
        Document.lease_owner == owner,
        Document.status == DocumentStatus.processing,
    )


def heartbeat(
    db: Database, document_id: uuid.UUID, owner: str, progress: float, lease_seconds: int
) -> bool:
    """Record progress and renew the lease; False when the job is no longer ours (deleted,
    reindexed or taken over) and the worker must stop."""
    return document_id in heartbeats(db, owner, {document_id: progress}, lease_seconds)


def heartbeats(
    db: Database, owner: str, progress: dict[uuid.UUID, float], lease_seconds: int
) -> set[uuid.UUID]:
    """`heartbeat` for several documents in one transaction: the ones still ours."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    ours: set[uuid.UUID] = set()
    with db.session() as session:
        for document_id, share in progress.items():
            result = session.execute(
                update(Document)
                .where(_owned(document_id, owner))
                .values(progress=round(min(max(share, 0.0), 1.0), 4), lease_expires_at=expires)
            )
            if _rowcount(result) == 1:
                ours.add(document_id)
    return ours


def release(db: Database, document_ids: list[uuid.UUID], owner: str) -> int:
    """Give back claims a stopping worker did not start on: queued again at once, the
    attempt not counted."""
    if not document_ids:
        return 0
    with db.session() as session:
        result = session.execute(
            update(Document)
            .where(
                Document.id.in_(document_ids),
                Document.lease_owner == owner,
                Document.status == DocumentStatus.processing,
            )
            .values(
                status=DocumentStatus.queued,
                lease_owner=None,
                lease_expires_at=None,
                attempts=Document.attempts - 1,
                progress=0.0,
            )
        )
        return _rowcount(result)


def complete(
    db: Database,
    document_id: uuid.UUID,
    owner: str,
    chunk_count: int,
    metadata: dict[str, Any],
) -> bool:
    with db.session() as session:
        current = session.scalar(select(Document.metadata_json).where(_owned(document_id, owner)))
        result = session.execute(
            update(Document)
            .where(_owned(document_id, owner))
            .values(
                status=DocumentStatus.ready,
                progress=1.0,
                chunk_count=chunk_count,
                error=None,
                lease_expires_at=None,
                processed_at=utcnow(),
                metadata_json={**(current or {}), **metadata},
            )
        )
        return _rowcount(result) == 1


def fail(
    db: Database,
    document_id: uuid.UUID,
    owner: str,
    reason: str,
    *,
    retry: bool,
    max_attempts: int,
    vectors_left: bool = False,
) -> DocumentStatus | None:
    """Give the job back (transient error, attempts left) or end it `failed`. `vectors_left`:
    the store could not delete what this attempt wrote; if the document ends `failed` they
    are queued for deletion (a retry clears them itself before it writes)."""
    with db.session() as session:
        job = session.execute(
            select(Document.attempts, Document.chatbot_id).where(_owned(document_id, owner))
        ).first()
        if job is None:
            return None
        attempts, chatbot_id = job
        status = (
            DocumentStatus.queued if retry and attempts < max_attempts else DocumentStatus.failed
        )
        retry_at = utcnow() + timedelta(seconds=RETRY_BACKOFF_SECONDS * attempts)
        session.execute(
            update(Document)
            .where(_owned(document_id, owner))
            .values(
                status=status,
                error=reason[:2000],
                progress=0.0,
                chunk_count=0,
                lease_owner=None,
                lease_expires_at=retry_at if status == DocumentStatus.queued else None,
                processed_at=utcnow() if status == DocumentStatus.failed else None,
            )
        )
        if vectors_left and status == DocumentStatus.failed:
            session.add(PendingDeletion(chatbot_id=chatbot_id, document_id=document_id))
        return status


def job_state(db: Database, claim: Claim) -> tuple[bool, bool]:
    """(the document exists, its chatbot exists): what a worker that lost its job may clean
    up. A document that still exists belongs to someone else now: leave its vectors alone."""
    with db.session() as session:
        if session.get(Document, claim.document_id) is not None:
            return True, True
        return False, session.get(Chatbot, claim.chatbot_id) is not None


# --- the operator's view ---


@dataclass(frozen=True)
class FailedDocument:
    id: uuid.UUID
    chatbot_id: uuid.UUID
    filename: str
    error: str
    processed_at: Any


@dataclass(frozen=True)
class QueueStatus:
    counts: dict[str, int]
    oldest_queued_seconds: float | None
    failed: list[FailedDocument]


def queue_status(session: Session, failed_limit: int = 50) -> QueueStatus:
    counts = {status.value: 0 for status in DocumentStatus}
    for status, count in session.execute(
        select(Document.status, func.count()).group_by(Document.status)
    ).all():
        counts[str(status)] = int(count)
    oldest = session.scalar(
        select(func.min(Document.uploaded_at)).where(Document.status == DocumentStatus.queued)
    )
    failed = session.execute(
        select(
            Document.id,
            Document.chatbot_id,
            Document.filename,
            Document.error,
            Document.processed_at,
        )
        .where(Document.status == DocumentStatus.failed)
        .order_by(Document.processed_at.desc(), Document.id)
        .limit(failed_limit)
    ).all()
    age = (utcnow() - oldest).total_seconds() if oldest is not None else None
    return QueueStatus(
        counts=counts,
        oldest_queued_seconds=age,
        failed=[FailedDocument(i, c, f, e or "", p) for i, c, f, e, p in failed],
    )


@dataclass(frozen=True)
class Backlog:
    queued: int
    processing: int
    oldest_queued_seconds: float | None


def backlog(session: Session) -> Backlog:
    """What /metrics shows of the queue, in one query on (status, uploaded_at)."""
    counts, oldest = {}, None
    for status, count, first in session.execute(
        select(Document.status, func.count(), func.min(Document.uploaded_at))
        .where(Document.status.in_((DocumentStatus.queued, DocumentStatus.processing)))
        .group_by(Document.status)
    ).all():
        counts[DocumentStatus(status)] = int(count)
        if status == DocumentStatus.queued:
            oldest = first
    return Backlog(
        queued=counts.get(DocumentStatus.queued, 0),
        processing=counts.get(DocumentStatus.processing, 0),
        oldest_queued_seconds=(utcnow() - oldest).total_seconds() if oldest else None,
    )


def retry_failed(session: Session, document_ids: list[uuid.UUID] | None = None) -> int:
    """Queue failed documents again with fresh attempts (all of them when no ids are given)."""
    scope = update(Document).where(Document.status == DocumentStatus.failed)
    if document_ids is not None:
        scope = scope.where(Document.id.in_(document_ids))
    result = session.execute(
        scope.values(
            status=DocumentStatus.queued,
            error=None,
            attempts=0,
            progress=0.0,
            lease_owner=None,
            lease_expires_at=None,
            processed_at=None,
        )
    )
    return _rowcount(result)

"""Documents of a chatbot: accept uploads into the queue, list, delete, reindex."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.chatbots.service import get_owned_chatbot
from app.core.config import Settings
from app.core.db import Database, after_commit, paginate
from app.core.errors import Conflict, NotFound, UnsupportedMediaType
from app.core.schemas import PageParams
from app.documents.passages import delete_chatbot_passages
from app.documents.upload import ReceivedFile
from app.ingest import deletions
from app.models import Chatbot, Document, DocumentStatus
from app.rag.extract import SUPPORTED_TYPES, detect_file_type
from app.rag.vector_store import VectorStore

SUPPORTED_LIST = ", ".join(sorted(t.upper() for t in SUPPORTED_TYPES))


class DuplicateDocument(Conflict):
    code = "duplicate_document"


class DocumentLimitReached(Conflict):
    code = "document_limit_reached"


# An upload's body may take minutes to arrive, so its request holds no session (a pooled
# connection) while it streams: the checks before it (`upload_target`) and the insert after
# it (`accept_upload`) are two short transactions of their own.


def upload_target(
    db: Database, settings: Settings, customer_id: uuid.UUID, chatbot_id: uuid.UUID
) -> Chatbot:
    """The chatbot an upload goes to, checked before its body is read: 404, or 409 when it
    already has MAX_DOCUMENTS_PER_CHATBOT documents (no point sending the file)."""
    with db.session() as session:
        chatbot = get_owned_chatbot(session, customer_id, chatbot_id)
        _refuse_over_limit(session, settings, chatbot.id)
        return chatbot


def accept_upload(
    db: Database,
    settings: Settings,
    chatbot: Chatbot,
    received: ReceivedFile,
    wake: Callable[[], None] | None = None,
) -> Document:
    """Validate a stored upload and queue it in one short transaction (`wake` runs once it has
    committed); on any refusal the file is removed."""
    try:
        file_type = detect_file_type(received.path, received.filename)
        if file_type is None:
            raise UnsupportedMediaType(
                f"{received.filename!r} is not a supported document (judged by its content); "
                f"supported types: {SUPPORTED_LIST}."
            )
        with db.session() as session:
            # The chatbot's row lock serialises its uploads' inserts, so the count below is
            # exact; a chatbot deleted while the file arrived is 404 here.
            get_owned_chatbot(session, chatbot.customer_id, chatbot.id, for_update=True)
            document = _insert(session, settings, chatbot, received, file_type)
            if wake is not None:
                after_commit(session, wake)
    except BaseException as exc:
        _unlink(received.path)
        if isinstance(exc, NotFound):
            _remove_if_empty(received.path.parent)
        raise
    return document


def _insert(
    session: Session, settings: Settings, chatbot: Chatbot, received: ReceivedFile, file_type: str
) -> Document:
    # A failed duplicate is replaced first, so re-uploading it at the limit works.
    _refuse_duplicate(session, settings, chatbot.id, received)
    _refuse_over_limit(session, settings, chatbot.id)
    final = received.path.with_name(f"{uuid.uuid4().hex}.{file_type}")
    os.replace(received.path, final)
    received.path = final
    document = Document(
        chatbot_id=chatbot.id,
        filename=received.filename,
        file_path=final.relative_to(settings.UPLOAD_DIR).as_posix(),
        file_type=file_type,
        size_bytes=received.size,
        content_hash=received.sha256,
        status=DocumentStatus.queued,
        metadata_json={},
    )
    session.add(document)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        _refuse_duplicate(session, settings, chatbot.id, received)
        raise
    return document


def _refuse_over_limit(session: Session, settings: Settings, chatbot_id: uuid.UUID) -> None:
    limit = settings.MAX_DOCUMENTS_PER_CHATBOT
    count = session.scalar(
        select(func.count()).select_from(Document).where(Document.chatbot_id == chatbot_id)
    )
    if (count or 0) >= limit:
        raise DocumentLimitReached(
            f"This chatbot already has {count} documents, the most it may have ({limit}); "
            "delete some before uploading more."
        )


def _refuse_duplicate(
    session: Session, settings: Settings, chatbot_id: uuid.UUID, received: ReceivedFile
) -> None:
    """The same content twice is refused, unless the first try failed: then the new upload
    replaces it (that is what "upload it again" means)."""
    existing = session.scalar(
        select(Document).where(
            Document.chatbot_id == chatbot_id, Document.content_hash == received.sha256
        )
    )
    if existing is not None and existing.status == DocumentStatus.failed:
        old_path = settings.UPLOAD_DIR / existing.file_path
        session.delete(existing)
        session.flush()
        after_commit(session, lambda: _unlink(old_path))
        return
    if existing is not None:
        raise DuplicateDocument(
            f"This file was already uploaded to this chatbot as document {existing.id} "
            f"({existing.filename!r}, status {existing.status.value}); it was not added again."
        )


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _remove_if_empty(folder: Path) -> None:
    # The upload re-created the folder of a chatbot deleted meanwhile.
    try:
        folder.rmdir()
    except OSError:
        pass


def list_documents(
    session: Session, chatbot: Chatbot, page: PageParams, status: DocumentStatus | None
) -> tuple[list[Document], int]:
    scope = select(Document).where(Document.chatbot_id == chatbot.id)
    if status is not None:
        scope = scope.where(Document.status == status)
    return paginate(session, scope, page, Document.uploaded_at.desc(), Document.id)


def get_document(session: Session, chatbot: Chatbot, document_id: uuid.UUID) -> Document:
    document = session.scalar(
        select(Document).where(Document.id == document_id, Document.chatbot_id == chatbot.id)
    )
    if document is None:
        raise NotFound("Document not found.")
    return document


def delete_document(
    session: Session, settings: Settings, store: VectorStore, chatbot: Chatbot, document: Document
) -> None:
    """The row goes now; its file and vectors once that commits. The vectors' deletion is
    recorded in the same transaction, so a vector store that is down only delays it (the
    ingest workers retry). A worker busy with the document notices at its next progress
    update and drops what it wrote."""
    path = settings.UPLOAD_DIR / document.file_path
    chatbot_id, document_id = chatbot.id, document.id
    session.delete(document)
    session.flush()
    deletions.delete_vectors(session, store, chatbot_id, document_id)
    after_commit(session, lambda: _unlink(path))


def reindex(session: Session, chatbot: Chatbot, wake: Callable[[], None] | None = None) -> int:
    """Queue every document again; the first worker to claim one of them drops the old
    collection before it writes (see `queue.claim_next`), so any process can ask (the API,
    the operator's CLI) and a crash in between loses nothing."""
    result = session.execute(
        update(Document)
        .where(Document.chatbot_id == chatbot.id)
        .values(
            status=DocumentStatus.queued,
            progress=0.0,
            chunk_count=0,
            error=None,
            attempts=0,
            lease_owner=None,
            lease_expires_at=None,
            processed_at=None,
            metadata_json={},
        )
    )
    chatbot.rebuild_pending = True
    # The lexical index is rebuilt as each document is processed again.
    delete_chatbot_passages(session, chatbot.id)
    session.flush()
    if wake is not None:
        after_commit(session, wake)
    return int(getattr(result, "rowcount", 0) or 0)

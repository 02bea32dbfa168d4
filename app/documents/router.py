from __future__ import annotations

import uuid
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response, status
from starlette.requests import ClientDisconnect

from app.auth.dependencies import UploadUser
from app.chatbots.dependencies import OwnedChatbot
from app.chatbots.service import chatbot_upload_dir
from app.core.db import DatabaseDep, SessionDep
from app.core.deps import SettingsDep
from app.core.schemas import Page, Pagination, errors
from app.documents import service
from app.documents.schemas import Document, Reindex
from app.documents.upload import UploadLimits, UploadSlots, receive_file
from app.models import DocumentStatus
from app.runtime import RuntimeDep

router = APIRouter(tags=["documents"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


# Its request body is capped as a whole by the body-limit middleware (`upload_body_limit`).
UPLOAD_PATH_PREFIX = "/api/upload/"


@router.post(
    UPLOAD_PATH_PREFIX + "{chatbot_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Document,
    responses=errors(401, 404, 408, 409, 413, 415, 422, 429, 503, 507),
    openapi_extra=_UPLOAD_BODY,
    summary="Upload a document (multipart field `file`); it is queued for ingestion",
)
async def upload_document(
    chatbot_id: uuid.UUID,
    request: Request,
    user: UploadUser,
    db: DatabaseDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Document | Response:
    # No SessionDep: the body may take minutes, and no pooled connection is held meanwhile
    # (see service.upload_target/accept_upload).
    chatbot = await to_thread.run_sync(
        service.upload_target, db, settings, user.customer_id, chatbot_id
    )
    async with UploadSlots.of(runtime.limiter.storage, settings).hold(user.customer_id):
        try:
            received = await receive_file(
                request.stream(),
                request.headers.get("content-type"),
                chatbot_upload_dir(settings, chatbot.customer_id, chatbot.id),
                UploadLimits.of(settings),
            )
        except ClientDisconnect:
            return Response(status_code=499)  # the client left (nginx's code); nobody reads it
        document = await to_thread.run_sync(
            lambda: service.accept_upload(
                db, settings, chatbot, received, wake=runtime.workers.wake
            )
        )
    return Document.model_validate(document)


@router.get(
    "/api/chatbots/{chatbot_id}/documents",
    response_model=Page[Document],
    responses=errors(401, 404, 422),
    summary="The chatbot's documents with their ingestion status, newest first",
)
def list_documents(
    chatbot: OwnedChatbot,
    session: SessionDep,
    page: Pagination,
    status_filter: Annotated[DocumentStatus | None, Query(alias="status")] = None,
) -> Page[Document]:
    rows, total = service.list_documents(session, chatbot, page, status_filter)
    return Page[Document].of(rows, total, page)


@router.get(
    "/api/chatbots/{chatbot_id}/documents/{document_id}",
    response_model=Document,
    responses=errors(401, 404, 422),
)
def get_document(document_id: uuid.UUID, chatbot: OwnedChatbot, session: SessionDep) -> Document:
    return Document.model_validate(service.get_document(session, chatbot, document_id))


@router.delete(
    "/api/chatbots/{chatbot_id}/documents/{document_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401, 404, 422),
    summary="Delete a document with its file and vectors (also while it is processing)",
)
def delete_document(
    document_id: uuid.UUID,
    chatbot: OwnedChatbot,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    document = service.get_document(session, chatbot, document_id)
    service.delete_document(session, settings, runtime.store, chatbot, document)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api/chatbots/{chatbot_id}/reindex",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Reindex,
    responses=errors(401, 404, 422),
    summary="Re-embed every document with the current embedding model",
)
def reindex(chatbot: OwnedChatbot, session: SessionDep, runtime: RuntimeDep) -> Reindex:
    queued = service.reindex(session, chatbot, runtime.workers.wake)
    return Reindex(
        chatbot_id=chatbot.id, documents_queued=queued, embedding_model=runtime.embedder.model_name
    )

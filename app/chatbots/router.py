from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.auth.dependencies import AdminUser, CurrentUser
from app.chatbots import service
from app.chatbots.dependencies import OwnedChatbot
from app.chatbots.schemas import ApiKey, Chatbot, ChatbotCreate, ChatbotUpdate, Snippet
from app.core.db import SessionDep
from app.core.deps import SettingsDep
from app.core.schemas import Page, Pagination, errors
from app.runtime import RuntimeDep

router = APIRouter(prefix="/api/chatbots", tags=["chatbots"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Chatbot,
    responses=errors(401, 403, 409, 422),
    summary="Create a chatbot (its API key is generated)",
)
def create_chatbot(
    data: ChatbotCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Chatbot:
    service.check_admin_fields(data, user.role)
    return Chatbot.model_validate(service.create_chatbot(session, settings, user.customer_id, data))


@router.get("", response_model=Page[Chatbot], responses=errors(401, 422))
def list_chatbots(user: CurrentUser, session: SessionDep, page: Pagination) -> Page[Chatbot]:
    rows, total = service.list_chatbots(session, user.customer_id, page)
    return Page[Chatbot].of(rows, total, page)


@router.get("/{chatbot_id}", response_model=Chatbot, responses=errors(401, 404, 422))
def get_chatbot(chatbot: OwnedChatbot) -> Chatbot:
    return Chatbot.model_validate(chatbot)


@router.patch("/{chatbot_id}", response_model=Chatbot, responses=errors(401, 403, 404, 422))
def update_chatbot(
    data: ChatbotUpdate, chatbot: OwnedChatbot, user: CurrentUser, session: SessionDep
) -> Chatbot:
    service.check_admin_fields(data, user.role)
    return Chatbot.model_validate(service.update_chatbot(session, chatbot, data))


@router.delete(
    "/{chatbot_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401, 403, 404, 422),
    summary="Delete a chatbot with its documents, files, vectors and history (admin)",
)
def delete_chatbot(
    chatbot_id: uuid.UUID,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    chatbot = service.get_owned_chatbot(session, admin.customer_id, chatbot_id)
    service.delete_chatbot(session, settings, runtime.store, chatbot)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{chatbot_id}/snippet",
    response_model=Snippet,
    responses=errors(401, 404, 422),
    summary="The <script> tag that embeds this chatbot's widget in a web page",
)
def get_snippet(chatbot: OwnedChatbot, settings: SettingsDep) -> Snippet:
    script_url, tag = service.snippet(settings, chatbot)
    return Snippet(chatbot_id=chatbot.id, script_url=script_url, snippet=tag)


@router.post(
    "/{chatbot_id}/rotate_key",
    response_model=ApiKey,
    responses=errors(401, 403, 404, 422),
    summary="Replace the chatbot's API key; the old key stops working at once (admin)",
)
def rotate_key(chatbot_id: uuid.UUID, admin: AdminUser, session: SessionDep) -> ApiKey:
    chatbot = service.get_owned_chatbot(session, admin.customer_id, chatbot_id, for_update=True)
    service.rotate_key(session, chatbot)
    return ApiKey(chatbot_id=chatbot.id, api_key=chatbot.api_key)

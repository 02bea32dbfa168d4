from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends

from app.auth.dependencies import CurrentUser
from app.chatbots.service import get_owned_chatbot
from app.core.db import SessionDep
from app.models import Chatbot


def owned_chatbot(chatbot_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Chatbot:
    return get_owned_chatbot(session, user.customer_id, chatbot_id)


OwnedChatbot = Annotated[Chatbot, Depends(owned_chatbot)]

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.auth.dependencies import AdminUser, CurrentUser
from app.auth.schemas import User
from app.core.db import SessionDep
from app.core.schemas import Page, Pagination, errors
from app.users import service
from app.users.schemas import UserCreate

router = APIRouter(prefix="/api/users", tags=["users"])


@router.get("", response_model=Page[User], responses=errors(401, 422))
def list_users(user: CurrentUser, session: SessionDep, page: Pagination) -> Page[User]:
    rows, total = service.list_users(session, user.customer_id, page)
    return Page[User].of(rows, total, page)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=User,
    responses=errors(401, 403, 409, 422),
    summary="Add a user to your customer (admin)",
)
def create_user(data: UserCreate, admin: AdminUser, session: SessionDep) -> User:
    return User.model_validate(service.create_user(session, admin.customer_id, data))


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401, 403, 404, 409, 422),
    summary="Remove a user (admin); the last admin cannot be removed",
)
def delete_user(user_id: uuid.UUID, admin: AdminUser, session: SessionDep) -> Response:
    service.delete_user(session, admin.customer_id, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

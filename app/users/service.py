"""A customer's users: list, add, remove (admins only for the last two)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.service import add_user
from app.core.db import paginate
from app.core.errors import Conflict, NotFound
from app.core.schemas import PageParams
from app.models import Role, User
from app.users.schemas import UserCreate


def list_users(
    session: Session, customer_id: uuid.UUID, page: PageParams
) -> tuple[list[User], int]:
    scope = select(User).where(User.customer_id == customer_id)
    return paginate(session, scope, page, User.created_at, User.id)


def create_user(session: Session, customer_id: uuid.UUID, data: UserCreate) -> User:
    return add_user(session, customer_id, data.username, data.password, data.role)


def get_owned_user(session: Session, customer_id: uuid.UUID, user_id: uuid.UUID) -> User:
    user = session.scalar(select(User).where(User.id == user_id, User.customer_id == customer_id))
    if user is None:
        raise NotFound("User not found.")
    return user


class LastAdmin(Conflict):
    code = "last_admin"
    default_detail = "This is the customer's last admin; add another admin first."


def delete_user(session: Session, customer_id: uuid.UUID, user_id: uuid.UUID) -> None:
    user = get_owned_user(session, customer_id, user_id)
    if user.role == Role.admin:
        # Lock the customer's admins so two concurrent deletions cannot remove both.
        admins = session.scalars(
            select(User.id)
            .where(User.customer_id == customer_id, User.role == Role.admin)
            .with_for_update()
        ).all()
        if len(admins) <= 1:
            raise LastAdmin()
    session.delete(user)
    session.flush()

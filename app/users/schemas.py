from __future__ import annotations

from app.auth.schemas import Password, Username
from app.core.schemas import Schema
from app.models.user import Role


class UserCreate(Schema):
    username: Username
    password: Password
    role: Role = Role.member

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import EmailStr, Field

from app.core.schemas import NoNul, NotBlank, Schema, StripNoNul
from app.models.user import Role

Username = Annotated[
    str,
    Field(
        min_length=3,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.@+-]+$",
        description="3-64 characters: letters, digits and _ . @ + -",
        examples=["alice"],
    ),
]
Password = Annotated[
    str,
    Field(
        min_length=8, max_length=256, description="At least 8 characters.", examples=["s3cret-pass"]
    ),
    NoNul,
]


class Customer(Schema):
    id: uuid.UUID
    name: str
    contact_email: str
    created_at: datetime


class User(Schema):
    id: uuid.UUID
    username: str
    role: Role
    customer_id: uuid.UUID
    created_at: datetime


class Me(User):
    customer: Customer


class RegisterRequest(Schema):
    username: Username
    password: Password
    customer_name: Annotated[
        str, Field(max_length=200, examples=["Acme Inc."]), StripNoNul, NotBlank
    ]
    contact_email: Annotated[EmailStr, Field(max_length=320, examples=["ops@acme.example.com"])]


class Token(Schema):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


class Registration(Token):
    user: User
    customer: Customer

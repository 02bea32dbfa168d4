from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.security import OAuth2PasswordRequestForm

from app.auth import service
from app.auth.dependencies import CurrentUser
from app.auth.schemas import Me, RegisterRequest, Registration, Token
from app.core.db import SessionDep
from app.core.deps import ClientIP, SettingsDep
from app.core.schemas import errors
from app.core.security import create_access_token
from app.runtime import LimiterDep

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=Registration,
    responses=errors(409, 422, 429),
    summary="Sign up a customer and its first (admin) user",
)
def register(
    data: RegisterRequest,
    session: SessionDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    ip: ClientIP,
) -> Registration:
    service.check_registration_rate(limiter, settings, ip)
    user, customer = service.register(session, settings, data)
    token, expires_in = create_access_token(settings, user.id, customer.id)
    return Registration.model_validate(
        {"access_token": token, "expires_in": expires_in, "user": user, "customer": customer}
    )


@router.post(
    "/token",
    response_model=Token,
    responses=errors(401, 422, 429),
    summary="Sign in (OAuth2 password flow)",
)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    ip: ClientIP,
) -> Token:
    user = service.authenticate(session, settings, limiter, form.username, form.password, ip)
    token, expires_in = create_access_token(settings, user.id, user.customer_id)
    return Token(access_token=token, expires_in=expires_in)


@router.get("/me", response_model=Me, responses=errors(401), summary="The signed-in user")
def me(user: CurrentUser, session: SessionDep) -> Me:
    customer = service.get_customer(session, user.customer_id)
    return Me.model_validate(
        {
            "id": user.id,
            "username": user.username,
            "role": user.role,
            "customer_id": user.customer_id,
            "created_at": user.created_at,
            "customer": customer,
        }
    )

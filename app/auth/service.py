"""Sign-up, sign-in and token resolution."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.schemas import RegisterRequest
from app.core import security
from app.core.config import Settings
from app.core.errors import (
    Conflict,
    InvalidCredentials,
    NotAuthenticated,
    TooManyLoginAttempts,
    ValidationFailed,
)
from app.core.ratelimit import RateLimiter, login_failure_limit
from app.models import Customer, Role, UsageToken, User


def register(session: Session, settings: Settings, data: RegisterRequest) -> tuple[User, Customer]:
    """Create the customer, its first (admin) user and its token balance."""
    _ensure_username_free(session, data.username)
    email = str(data.contact_email).lower()
    if session.scalar(select(Customer.id).where(func.lower(Customer.contact_email) == email)):
        raise EmailTaken()
    customer = Customer(name=data.customer_name, contact_email=email, billing_info={})
    session.add(customer)
    try:
        session.flush()
    except IntegrityError as exc:  # lost a race with a concurrent sign-up
        raise Conflict("That username or contact email is already registered.") from exc
    user = add_user(session, customer.id, data.username, data.password, Role.admin)
    session.add(UsageToken(customer_id=customer.id, tokens_remaining=settings.SIGNUP_TOKENS))
    session.flush()
    return user, customer


def add_user(
    session: Session, customer_id: uuid.UUID, username: str, password: str, role: Role
) -> User:
    """The one way a user is created (sign-up, an admin adding one, the operator's CLI):
    usernames are unique across customers, also when two requests race for one."""
    _ensure_username_free(session, username)
    user = User(
        username=username,
        password_hash=security.hash_password(password),
        customer_id=customer_id,
        role=role,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        raise UsernameTaken() from exc
    return user


def _ensure_username_free(session: Session, username: str) -> None:
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UsernameTaken()


class UsernameTaken(Conflict):
    code = "username_taken"
    default_detail = "That username is taken; choose another."


class EmailTaken(Conflict):
    code = "email_taken"
    default_detail = "A customer with that contact email already exists."


def authenticate(
    session: Session,
    settings: Settings,
    limiter: RateLimiter,
    username: str,
    password: str,
    client_ip: str,
) -> User:
    """Check a password, throttling repeated failures per username and per client IP."""
    if "\x00" in username or "\x00" in password or len(username) > 64 or len(password) > 256:
        raise ValidationFailed(
            "username (at most 64 characters) and password (at most 256) must not contain NUL."
        )
    limit = login_failure_limit(settings)
    # Exact username: sign-in matches it exactly, so other spellings are other accounts.
    keys = (("login-user", username), ("login-ip", client_ip))
    for key in keys:
        decision = limiter.is_blocked(limit, *key)
        if not decision.allowed:
            raise TooManyLoginAttempts(retry_after=decision.retry_after)
    user = session.scalar(select(User).where(User.username == username))
    if not security.verify_password(password, user.password_hash if user else None):
        for key in keys:
            limiter.hit(limit, *key)
        raise InvalidCredentials()
    limiter.clear(limit, *keys[0])
    assert user is not None
    return user


def user_from_token(session: Session, settings: Settings, token: str | None) -> User:
    if not token:
        raise NotAuthenticated("Send a bearer token: Authorization: Bearer <token>.")
    claims = security.decode_access_token(settings, token)
    if claims is None:
        raise NotAuthenticated("The token is invalid or has expired; sign in again.")
    user = session.get(User, claims.user_id)
    if user is None or user.customer_id != claims.customer_id:
        raise NotAuthenticated("The token's user no longer exists; sign in again.")
    return user


def get_customer(session: Session, customer_id: uuid.UUID) -> Customer:
    customer = session.get(Customer, customer_id)
    assert customer is not None  # users cascade-delete with their customer
    return customer

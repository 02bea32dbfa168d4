"""Sign-up, sign-in and token resolution."""

from __future__ import annotations

import uuid

from limits import parse
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
    RateLimited,
    TooManyLoginAttempts,
    ValidationFailed,
)
from app.core.ratelimit import RateLimiter, login_limits
from app.models import Customer, Role, UsageToken, User


class TooManyRegistrations(RateLimited):
    code = "too_many_registrations"
    default_detail = "Too many sign-ups from this address; try again later."


def check_registration_rate(limiter: RateLimiter, settings: Settings, client_ip: str) -> None:
    """Each sign-up grants SIGNUP_TOKENS: throttle them per client IP (shared through Redis
    when RATE_LIMIT_STORAGE_URL points there)."""
    decision = limiter.hit(parse(settings.RATE_LIMIT_REGISTRATIONS_PER_IP), "register", client_ip)
    if not decision.allowed:
        raise TooManyRegistrations(retry_after=decision.retry_after)


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
    """Check a password, throttling attempts per username and per client IP.

    Each attempt is counted before the password is checked (one atomic hit per key), so
    parallel guesses cannot all pass a check made before any of them was counted. A correct
    password clears its username's count; the per-IP count keeps successes too (its limit,
    LOGIN_MAX_ATTEMPTS_PER_IP, is set for an office signing in from one address)."""
    if "\x00" in username or "\x00" in password or len(username) > 64 or len(password) > 256:
        raise ValidationFailed(
            "username (at most 64 characters) and password (at most 256) must not contain NUL."
        )
    per_user, per_ip = login_limits(settings)
    # Exact username: sign-in matches it exactly, so other spellings are other accounts.
    user_key = ("login-user", username)
    for limit, key in ((per_ip, ("login-ip", client_ip)), (per_user, user_key)):
        decision = limiter.hit(limit, *key)
        if not decision.allowed:
            raise TooManyLoginAttempts(retry_after=decision.retry_after)
    user = session.scalar(select(User).where(User.username == username))
    if not security.verify_password(password, user.password_hash if user else None):
        raise InvalidCredentials()
    limiter.clear(per_user, *user_key)
    assert user is not None
    return user


def user_from_token(session: Session, settings: Settings, token: str | None) -> User:
    return user_for_claims(session, claims_from_token(settings, token))


def claims_from_token(settings: Settings, token: str | None) -> security.TokenClaims:
    """The token's claims, checked (signature, expiry) without the database."""
    if not token:
        raise NotAuthenticated("Send a bearer token: Authorization: Bearer <token>.")
    claims = security.decode_access_token(settings, token)
    if claims is None:
        raise NotAuthenticated("The token is invalid or has expired; sign in again.")
    return claims


def user_for_claims(session: Session, claims: security.TokenClaims) -> User:
    """The user a valid token names, if it still exists and still belongs to its customer."""
    user = session.get(User, claims.user_id)
    check_token_user(claims, user.customer_id if user is not None else None)
    assert user is not None
    return user


def check_token_user(claims: security.TokenClaims, customer_id: uuid.UUID | None) -> None:
    """`customer_id`: the customer of the token's user as stored now (None: no such user)."""
    if customer_id is None or customer_id != claims.customer_id:
        raise NotAuthenticated("The token's user no longer exists; sign in again.")


def get_customer(session: Session, customer_id: uuid.UUID) -> Customer:
    customer = session.get(Customer, customer_id)
    assert customer is not None  # users cascade-delete with their customer
    return customer

"""Passwords (argon2id via pwdlib), JWTs (algorithm pinned) and chatbot API keys."""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jose import JWTError, jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.config import Settings

# argon2id for new hashes; bcrypt only verifies hashes imported from elsewhere.
_password_hash = PasswordHash((Argon2Hasher(), BcryptHasher()))
# Verified against when the username is unknown, so timing does not reveal which usernames exist.
_DUMMY_HASH = _password_hash.hash("not-a-real-password-" + secrets.token_hex(8))

API_KEY_PREFIX = "cbk_"


def hash_password(password: str) -> str:
    return _password_hash.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        _password_hash.verify(password, _DUMMY_HASH)
        return False
    try:
        return _password_hash.verify(password, password_hash)
    except Exception:  # an unknown or damaged hash never authenticates
        return False


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    customer_id: uuid.UUID
    issued_at: datetime
    expires_at: datetime


def create_access_token(
    settings: Settings, user_id: uuid.UUID, customer_id: uuid.UUID
) -> tuple[str, int]:
    """Returns the token and its lifetime in seconds."""
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES)
    claims = {
        "sub": str(user_id),
        "customer_id": str(customer_id),
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "jti": secrets.token_hex(8),
    }
    token = jwt.encode(claims, settings.SECRET_KEY, algorithm=settings.ALGORITHM)
    return token, int(lifetime.total_seconds())


def decode_access_token(settings: Settings, token: str) -> TokenClaims | None:
    """None for any token that is not ours, expired, or malformed."""
    try:
        header = jwt.get_unverified_header(token)
        # Only the configured algorithm; `none` and algorithm confusion are refused here too.
        if header.get("alg") != settings.ALGORITHM:
            return None
        claims = jwt.decode(
            token,
            settings.SECRET_KEY,
            algorithms=[settings.ALGORITHM],
            options={"require_exp": True, "require_iat": True, "require_sub": True},
        )
        return TokenClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            customer_id=uuid.UUID(str(claims["customer_id"])),
            issued_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
    except (JWTError, KeyError, ValueError, TypeError):
        return None


def generate_api_key() -> str:
    """A publishable chatbot key: a recognisable prefix and 32 random bytes."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_keys_match(given: str | None, stored: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode(), stored.encode())

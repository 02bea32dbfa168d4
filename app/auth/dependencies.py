from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer

from app.auth import service
from app.core.db import DatabaseDep, SessionDep
from app.core.deps import SettingsDep
from app.core.errors import AdminRequired
from app.core.security import TokenClaims
from app.models import Role, User

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def current_user(
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> User:
    return service.user_from_token(session, settings, token)


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != Role.admin:
        raise AdminRequired()
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]


def current_user_short(
    settings: SettingsDep, db: DatabaseDep, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> User:
    """Like CurrentUser, without holding a database session for the whole request (query
    routes stream for seconds, an upload's body may take minutes; their own steps open short
    sessions)."""
    with db.session() as session:
        return service.user_from_token(session, settings, token)


QueryUser = Annotated[User, Depends(current_user_short)]
UploadUser = QueryUser


async def token_claims(
    settings: SettingsDep, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> TokenClaims:
    """A valid token's claims, checked without the database (a signature check: no thread
    needed). The query routes look the user up in their own admission transaction."""
    return service.claims_from_token(settings, token)


QueryClaims = Annotated[TokenClaims, Depends(token_claims)]

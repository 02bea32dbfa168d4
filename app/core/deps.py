"""Process-wide services injected into routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings, get_settings


async def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def settings_dep() -> Settings:
    # async: a trivial dependency must not cost a trip through the threadpool.
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings_dep)]
ClientIP = Annotated[str, Depends(client_ip)]

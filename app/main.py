"""The FastAPI application: routers, middleware, exception handlers, lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from app.auth.router import router as auth_router
from app.billing.router import router as billing_router
from app.chatbots.router import router as chatbots_router
from app.core.config import PLACEHOLDER_SECRET_KEY, Settings, get_settings
from app.core.db import get_database
from app.core.handlers import install_handlers
from app.core.logging import configure_logging
from app.core.middleware import BodyLimitMiddleware, RequestContextMiddleware, TenantCORSMiddleware
from app.documents.passages import lexical_index_problem
from app.documents.router import UPLOAD_PATH_PREFIX
from app.documents.router import router as documents_router
from app.documents.upload import upload_body_limit
from app.ops.router import router as ops_router
from app.query.router import router as query_router
from app.runtime import Runtime
from app.users.router import router as users_router
from app.widget.router import router as widget_router

log = logging.getLogger("app")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    problem = settings.secret_key_problem()
    if problem is not None:
        log.error("refusing to start: %s", problem)
        raise RuntimeError(problem)
    log.info(
        "secret key: %s",
        "the development placeholder (ENVIRONMENT=development; never in production)"
        if settings.SECRET_KEY == PLACEHOLDER_SECRET_KEY
        else f"set ({len(settings.SECRET_KEY.encode())} bytes)",
    )
    problem = await anyio.to_thread.run_sync(lexical_index_problem, get_database())
    if problem is not None:
        log.error("refusing to start: %s", problem)
        raise RuntimeError(problem)
    settings.UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    runtime = await anyio.to_thread.run_sync(Runtime.build, settings)
    runtime.start(get_database())
    app.state.runtime = runtime
    app.state.readiness_probes = runtime.readiness_probes()
    log.info("started", extra={"environment": settings.ENVIRONMENT})
    try:
        yield
    finally:
        await runtime.stop()
        get_database().dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_JSON)
    app = FastAPI(
        title="Chatbot management platform",
        version="0.1.0",
        description="Multi-tenant chatbots answering from each customer's own documents.",
        lifespan=lifespan,
        docs_url="/docs" if settings.ENABLE_DOCS else None,
        redoc_url="/redoc" if settings.ENABLE_DOCS else None,
        openapi_url="/openapi.json" if settings.ENABLE_DOCS else None,
    )
    app.state.settings = settings
    install_handlers(app)
    if settings.CORS_ALLOW_ORIGINS:
        app.add_middleware(
            TenantCORSMiddleware,
            allow_origins=settings.CORS_ALLOW_ORIGINS,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(
        BodyLimitMiddleware,
        default=lambda: settings.MAX_REQUEST_BYTES,
        larger={UPLOAD_PATH_PREFIX: lambda: upload_body_limit(settings)},
    )
    app.add_middleware(RequestContextMiddleware)
    for router in (
        ops_router,
        auth_router,
        users_router,
        chatbots_router,
        documents_router,
        billing_router,
        query_router,
        widget_router,
    ):
        app.include_router(router)
    return app


app = create_app()

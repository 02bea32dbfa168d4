"""Liveness, readiness and metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from app.core.db import get_database
from app.core.deps import SettingsDep
from app.core.errors import NotFound
from app.core.metrics import record_queue
from app.core.schemas import errors
from app.ingest import queue

router = APIRouter(tags=["operations"])
log = logging.getLogger("app.ops")


class Readiness(BaseModel):
    status: str = Field(description="`ready` or `not_ready`.")
    checks: dict[str, str] = Field(description="Each dependency: `ok` or what is wrong.")


@router.get("/health", summary="The process is alive")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="The database (and the services this process needs) are usable",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not usable; `checks` says what"}},
)
def ready(request: Request) -> JSONResponse:
    checks: dict[str, str] = {"database": _check_database()}
    for name, probe in getattr(request.app.state, "readiness_probes", {}).items():
        try:
            checks[name] = probe()
        except Exception:  # a probe failing is exactly what /ready reports
            # The name of what failed, not the exception's text (it can hold hosts, paths,
            # credentials); the log has the details.
            log.warning("readiness check %s failed", name, exc_info=True)
            checks[name] = "error"
    ok = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "checks": checks},
        status_code=200 if ok else 503,
    )


def _check_database() -> str:
    try:
        with get_database().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception:
        log.warning("readiness check database failed", exc_info=True)
        return "error"


@router.get(
    "/metrics",
    summary="Prometheus metrics (ENABLE_METRICS; else 404)",
    response_class=Response,
    responses=errors(404),
)
def metrics(settings: SettingsDep) -> Response:
    if not settings.ENABLE_METRICS:
        raise NotFound("No such endpoint; see /docs.")
    _scrape_queue()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _scrape_queue() -> None:
    """The queue's gauges, as of this scrape; a database that is down leaves the last values
    (the scrape itself still answers: /ready is where the outage shows)."""
    try:
        with get_database().session() as session:
            backlog = queue.backlog(session)
    except Exception:
        log.warning("could not read the ingestion queue for /metrics", exc_info=True)
        return
    record_queue(backlog.queued, backlog.processing, backlog.oldest_queued_seconds)

"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from app.core.db import get_database

router = APIRouter(tags=["operations"])


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
        except Exception as exc:  # a probe failing is exactly what /ready reports
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
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
    except Exception as exc:
        return f"error: {type(exc).__name__}"


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

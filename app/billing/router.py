from __future__ import annotations

from fastapi import APIRouter

from app.auth.dependencies import CurrentUser
from app.billing import service
from app.billing.schemas import UsageSummary
from app.core.db import SessionDep
from app.core.schemas import errors

router = APIRouter(tags=["billing"])


@router.get(
    "/api/usage",
    response_model=UsageSummary,
    responses=errors(401),
    summary="Your customer's token totals and balance",
)
def get_usage(user: CurrentUser, session: SessionDep) -> UsageSummary:
    return UsageSummary.model_validate(service.get_usage(session, user.customer_id))

"""Shared schema building blocks: the base model, bounded strings, pagination."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

T = TypeVar("T")


class Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _no_nul(value: str) -> str:
    # Also used on optional fields: None passes through.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _strip_no_nul(value: str) -> str:
    return _no_nul(value).strip()


def _not_blank(value: str) -> str:
    if not value:
        raise ValueError("must not be blank")
    return value


# Validators to put AFTER the Field(...) constraints at the field, so length errors read as
# characters: `name: Annotated[str, Field(max_length=200), NoNul]`.
NoNul = AfterValidator(_no_nul)
StripNoNul = AfterValidator(_strip_no_nul)
NotBlank = AfterValidator(_not_blank)


class Page(Schema, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, rows: Sequence[Any], total: int, page: PageParams) -> Page[T]:
        """Validate ORM rows into this page's item schema (use as `Page[Item].of(...)`)."""
        return cls.model_validate(
            {"items": list(rows), "total": total, "limit": page.limit, "offset": page.offset}
        )


class PageParams(BaseModel):
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=200, description="Page size (1-200).")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


Pagination = Annotated[PageParams, Depends(page_params)]


class ErrorBody(BaseModel):
    detail: str = Field(description="A sentence a person can act on.")
    code: str = Field(description="A stable snake_case error code.")


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    errors: list[ValidationErrorItem] = Field(description="Each invalid field.")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer (500 and 503 always)."""
    from app.core.errors import ERROR_DESCRIPTIONS

    return {
        status: {
            "model": ValidationErrorBody if status == 422 else ErrorBody,
            "description": ERROR_DESCRIPTIONS[status],
        }
        # 500 and 503 on every route: an unexpected error, the database (or its pool) gone.
        for status in dict.fromkeys((*statuses, 500, 503))
    }

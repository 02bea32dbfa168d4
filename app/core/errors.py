"""Domain errors: one hierarchy, mapped to HTTP by a single exception handler."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base of every error a client may see. `detail` is a sentence a person can act on."""

    status_code: int = 400
    code: str = "bad_request"
    default_detail: str = "The request could not be processed."
    # What a website's visitor is told instead of `detail` on the public endpoints (None:
    # the detail is fit for visitors): never a tenant's balance, limits, models or paths.
    public_detail: str | None = None

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        self.detail = detail or self.default_detail
        self.headers = headers
        super().__init__(self.detail)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "code": self.code}


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    default_detail = "Not found."


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    default_detail = "The request conflicts with the current state."


class InvalidCredentials(AppError):
    status_code = 401
    code = "invalid_credentials"
    default_detail = "Incorrect username or password."

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class NotAuthenticated(AppError):
    status_code = 401
    code = "not_authenticated"
    default_detail = "Missing or invalid credentials."

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class InvalidApiKey(AppError):
    status_code = 401
    code = "invalid_api_key"
    default_detail = "Missing or wrong API key; send the chatbot's key in the X-API-Key header."


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    default_detail = "You are not allowed to do this."


class AdminRequired(Forbidden):
    code = "admin_required"
    default_detail = "Only an admin of this customer can do this."


class OriginNotAllowed(Forbidden):
    code = "origin_not_allowed"
    default_detail = "This website's origin is not in the chatbot's allowed_origins."


class ValidationFailed(AppError):
    """A rule FastAPI's validation cannot express; the body has the same shape as its 422s."""

    status_code = 422
    code = "validation_error"
    default_detail = "The request is not valid."

    def __init__(self, detail: str | None = None, *, loc: tuple[str | int, ...] = ()):
        super().__init__(detail)
        self.loc = loc

    def body(self) -> dict[str, Any]:
        error = {"loc": list(self.loc), "msg": self.detail, "type": "value_error"}
        return {**super().body(), "errors": [error]}


class QuestionTooLong(ValidationFailed):
    code = "question_too_long"
    default_detail = "The question is too long."


class PayloadTooLarge(AppError):
    status_code = 413
    code = "file_too_large"
    default_detail = "The file is too large."


class RequestTooLarge(AppError):
    """A request body over its endpoint's cap (MAX_REQUEST_BYTES; uploads: their own)."""

    status_code = 413
    code = "request_too_large"
    default_detail = "The request body is too large."

    def __init__(self, detail: str | None = None):
        # The rest of the body is not read: the connection cannot be reused.
        super().__init__(detail, headers={"Connection": "close"})


class InsufficientStorage(AppError):
    """The server could not write a file (disk full, folder not writable): nothing was kept."""

    status_code = 507
    code = "insufficient_storage"
    default_detail = "The server cannot store files right now; nothing was saved. Retry later."

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"Retry-After": "60", "Connection": "close"})


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_file_type"
    default_detail = "This file type is not supported."


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    default_detail = "Too many requests; retry later."

    def __init__(self, detail: str | None = None, *, retry_after: int = 1):
        self.retry_after = max(1, int(retry_after))
        super().__init__(detail, headers={"Retry-After": str(self.retry_after)})


class TooManyLoginAttempts(RateLimited):
    code = "too_many_attempts"
    default_detail = "Too many failed sign-in attempts; wait before trying again."


class DemoLimitReached(RateLimited):
    code = "demo_limit_reached"
    default_detail = "This chatbot has used all of its free demo messages."


class ChatbotBusy(RateLimited):
    code = "chatbot_busy"
    default_detail = "This chatbot is answering as many questions as it may at once."
    public_detail = "This chatbot is busy answering other questions; please try again shortly."


class InsufficientTokens(AppError):
    status_code = 402
    code = "insufficient_tokens"
    default_detail = "Not enough tokens left for this request; buy a token pack to continue."
    public_detail = "This chatbot cannot answer right now; please try again later."


class MonthlyLimitReached(InsufficientTokens):
    code = "monthly_limit_reached"
    default_detail = "This chatbot has spent its monthly token limit."


class InternalError(AppError):
    """Never raised on purpose: the body every unexpected failure answers with."""

    status_code = 500
    code = "internal_error"
    default_detail = "Internal server error; the error was logged."


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    default_detail = "A service this request needs is unavailable; retry later."


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    default_detail = "The database is unavailable right now; retry later."


class LLMUnavailable(ServiceUnavailable):
    code = "llm_unavailable"
    default_detail = (
        "The language model is unavailable right now; nothing was charged. Retry later."
    )

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"Retry-After": "5"})


# Error responses declared in the OpenAPI document, route by route.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request",
    401: "Not authenticated",
    402: "Not enough tokens",
    403: "Forbidden",
    404: "Not found (or owned by another customer)",
    408: "The request body did not arrive in time",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation error",
    429: "Too many requests (see Retry-After)",
    500: "Internal error (logged with the request id)",
    503: "Service unavailable",
    507: "Insufficient storage (nothing was saved)",
}

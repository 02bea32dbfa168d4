"""The LLM: one Fireworks chat-completions client per process.

Built once by the app's lifespan (``LLMClient(settings)``) and closed there (``aclose()``).
Requests go through the official ``fireworks`` SDK (``AsyncFireworks``) over an
``httpx.AsyncClient`` that this module owns (or that the caller passes in), never the SDK's
default aiohttp transport, so timeouts, connection closing and test servers behave the
httpx way.

Retries are ours, not the SDK's (its ``max_retries`` is 0): the SDK's backoff starts at
0.5 s, honours ``Retry-After`` up to a minute and cannot tell "nothing streamed yet" from
"the visitor already saw half an answer".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import httpx
from fireworks import APIConnectionError, APIStatusError, APITimeoutError, AsyncFireworks
from fireworks.types.chat import ChatCompletionChunk, CompletionCreateResponse
from fireworks.types.shared import UsageInfo
from fireworks.types.shared_params import ChatMessage

from app.core.config import Settings

logger = logging.getLogger("app.rag.llm")

_T = TypeVar("_T")

# Short on purpose: a visitor is waiting, and LLM_MAX_RETRIES bounds the count.
_BACKOFF_BASE_SECONDS = 0.2
_CONNECT_TIMEOUT_CAP_SECONDS = 5.0
# Each open answer stream holds one connection, so allow many; keep-alive slots only
# need to cover the steady state.
_HTTP_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=32)


class LLMError(Exception):
    """The upstream failed (after retries) or timed out. ``str()`` is a short reason that
    is safe to log and does not include message contents."""


@dataclass(frozen=True)
class Completion:
    text: str
    # None: the provider sent no usage; the caller decides how to account for it.
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True)
class StreamDelta:
    """One non-empty piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class StreamUsage:
    """The last item of every successful stream. None values: the provider sent no usage."""

    input_tokens: int | None
    output_tokens: int | None


class _UpstreamReportedError(Exception):
    """A 200 response that is not a usable answer."""


class _StreamErrorEvent(Exception):
    """An error event inside a 200 stream: the provider failed while generating."""


class LLMClient:
    """Chat completions against Fireworks' OpenAI-compatible API.

    ``settings.LLM_BASE_URL`` is the OpenAI-style base (requests go to
    ``{LLM_BASE_URL}/chat/completions``, e.g. ``https://api.fireworks.ai/inference/v1``);
    it must end in ``/v1`` because the SDK itself appends ``/v1/chat/completions``.

    Without ``FIREWORKS_API_KEY`` the client can still be built (``configured`` is False)
    but every call raises ``LLMError``.
    """

    def __init__(self, settings: Settings, http_client: httpx.AsyncClient | None = None) -> None:
        self.model: str = settings.LLM_MODEL
        api_key = (settings.FIREWORKS_API_KEY or "").strip()
        self.configured: bool = bool(api_key)
        self._max_retries = settings.LLM_MAX_RETRIES
        self._timeout_seconds = settings.LLM_TIMEOUT_SECONDS
        self._closed = False
        self._sdk: AsyncFireworks | None = None
        self._owns_http = False
        self._http: httpx.AsyncClient | None = http_client
        if not self.configured:
            return

        base_url = _sdk_base_url(settings.LLM_BASE_URL)
        timeout = httpx.Timeout(
            self._timeout_seconds,
            connect=min(_CONNECT_TIMEOUT_CAP_SECONDS, self._timeout_seconds),
        )
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=timeout, limits=_HTTP_LIMITS)
            self._owns_http = True
        _quiet_sdk_debug_logging()
        self._sdk = AsyncFireworks(
            api_key=api_key,
            base_url=base_url,
            # Passed explicitly because the SDK sets a timeout on every request, which would
            # otherwise be its 60 s default or whatever a caller's http client carries.
            timeout=timeout,
            max_retries=0,
            http_client=self._http,
        )

    async def aclose(self) -> None:
        """Release connections. A caller-provided ``http_client`` is left open (its owner
        closes it); that is also why the SDK's own ``close()`` is not used."""
        self._closed = True
        if self._owns_http and self._http is not None:
            await self._http.aclose()

    async def complete(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float
    ) -> Completion:
        sdk = self._require_sdk()

        async def attempt() -> Completion:
            # httpx timeouts bound each read, not the whole request: a server trickling
            # bytes could otherwise hold a visitor far beyond LLM_TIMEOUT_SECONDS.
            async with asyncio.timeout(self._timeout_seconds):
                response = await self._create(sdk, messages, max_tokens, temperature, False)
            # The SDK hands back whatever a 200 carried (e.g. an HTML page from a proxy).
            if not isinstance(response, CompletionCreateResponse) or not response.choices:
                raise _UpstreamReportedError("upstream returned an unexpected response")
            content = response.choices[0].message.content
            usage = response.usage
            return Completion(
                text=content if isinstance(content, str) else "",
                input_tokens=usage.prompt_tokens if usage is not None else None,
                output_tokens=usage.completion_tokens if usage is not None else None,
            )

        return await self._with_retries("complete", attempt)

    async def stream(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[StreamDelta | StreamUsage, None]:
        """Yield ``StreamDelta``s, then exactly one ``StreamUsage``.

        Failures before the first delta are retried like ``complete``; after it they raise
        ``LLMError`` (the visitor has already seen part of this answer). The idle gap
        between chunks is bounded by LLM_TIMEOUT_SECONDS; the total duration is not.

        Consumers that may stop early should close the generator deterministically
        (``async with contextlib.aclosing(client.stream(...)) as items:``); closing or
        cancelling it closes the upstream response, which makes the provider stop
        generating (and billing).
        """
        sdk = self._require_sdk()
        attempts = 1 + self._max_retries
        for attempt in range(1, attempts + 1):
            yielded = False
            saw_chunk = False
            usage: UsageInfo | None = None
            try:
                upstream = await self._create(sdk, messages, max_tokens, temperature, True)
                try:
                    async for chunk in upstream:
                        _raise_if_error_event(chunk)
                        saw_chunk = True
                        if chunk.usage is not None:
                            usage = chunk.usage
                        text = _delta_text(chunk)
                        if text:
                            yielded = True
                            yield StreamDelta(text)
                    if not saw_chunk:
                        # Not even a finish chunk: not an SSE answer (e.g. a proxy's page).
                        raise _UpstreamReportedError("upstream returned an unexpected response")
                finally:
                    # Runs on consumer aclose()/cancellation too: dropping the connection is
                    # the only way to tell the provider to stop generating.
                    await upstream.close()
            except Exception as exc:
                retryable, reason = _classify(exc)
                if retryable and not yielded and attempt < attempts:
                    await self._backoff("stream", reason, attempt, attempts)
                    continue
                if yielded:
                    reason = f"{reason} mid-stream"
                raise self._failure("stream", reason, attempt, exc) from exc
            yield StreamUsage(
                input_tokens=usage.prompt_tokens if usage is not None else None,
                output_tokens=usage.completion_tokens if usage is not None else None,
            )
            return

    # --- internals ---

    async def _create(
        self,
        sdk: AsyncFireworks,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        stream: bool,
    ) -> Any:
        """The one request both calls send: a completion, or an answer stream."""
        return await sdk.chat.completions.create(
            model=self.model,
            messages=_as_chat_messages(messages),
            max_tokens=max_tokens,
            temperature=temperature,
            stream=stream,
            # Not in the SDK's typed params; some Fireworks models only report streaming
            # usage when asked (others always put it on the last chunk).
            extra_body={"stream_options": {"include_usage": True}} if stream else None,
        )

    def _require_sdk(self) -> AsyncFireworks:
        if self._closed:
            raise LLMError("LLM client is closed")
        if self._sdk is None:
            raise LLMError("LLM is not configured (no FIREWORKS_API_KEY)")
        return self._sdk

    async def _with_retries(self, op: str, call: Callable[[], Awaitable[_T]]) -> _T:
        attempts = 1 + self._max_retries
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as exc:
                retryable, reason = _classify(exc)
                if not retryable or attempt >= attempts:
                    raise self._failure(op, reason, attempt, exc) from exc
                await self._backoff(op, reason, attempt, attempts)
                attempt += 1

    async def _backoff(self, op: str, reason: str, attempt: int, attempts: int) -> None:
        delay = _BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)
        logger.warning(
            "LLM %s attempt %d/%d failed (%s); retrying in %.1fs",
            op,
            attempt,
            attempts,
            reason,
            delay,
            extra={"llm_model": self.model, "llm_reason": reason},
        )
        await asyncio.sleep(delay)

    def _failure(self, op: str, reason: str, attempt: int, exc: BaseException) -> LLMError:
        # Only the reason and the provider's request id: SDK error messages can quote the
        # provider's error body, which may echo parts of the prompt.
        logger.error(
            "LLM %s failed after %d attempt(s): %s",
            op,
            attempt,
            reason,
            extra={
                "llm_model": self.model,
                "llm_reason": reason,
                "llm_request_id": _provider_request_id(exc),
            },
        )
        return LLMError(reason)


def _sdk_base_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        raise ValueError(
            "LLM_BASE_URL must be an OpenAI-style base ending in /v1 "
            f"(e.g. https://api.fireworks.ai/inference/v1), got {base_url!r}"
        )
    # The SDK appends "/v1/chat/completions" to any base_url it is given.
    return base.removesuffix("/v1")


def _quiet_sdk_debug_logging() -> None:
    # At DEBUG the SDK logs full request options (message contents). Keep it at INFO unless
    # someone configured the "fireworks" logger on purpose (e.g. FIREWORKS_LOG=debug).
    sdk_logger = logging.getLogger("fireworks")
    if sdk_logger.level == logging.NOTSET:
        sdk_logger.setLevel(logging.INFO)


def _as_chat_messages(messages: list[dict[str, str]]) -> Iterable[ChatMessage]:
    # ChatMessage is a TypedDict with the same keys; the dicts are passed through unchanged.
    return cast("Iterable[ChatMessage]", messages)


def _classify(exc: BaseException) -> tuple[bool, str]:
    """(retryable, short reason). Retry what a second try can fix: overload, 5xx, network."""
    if isinstance(exc, APIStatusError):
        status = exc.status_code
        return status == 429 or status >= 500, f"upstream HTTP {status}"
    # TimeoutError is our asyncio.timeout; httpx errors surface raw while a stream is read.
    if isinstance(exc, APITimeoutError | httpx.TimeoutException | TimeoutError):
        return True, "upstream timed out"
    if isinstance(exc, APIConnectionError | httpx.TransportError):
        return True, "upstream connection failed"
    if isinstance(exc, _StreamErrorEvent):
        # Request validation happens before the 200, so this is the provider's own trouble.
        return True, "upstream reported an error"
    if isinstance(exc, _UpstreamReportedError):
        return False, str(exc)
    return False, f"upstream error ({type(exc).__name__})"


def _raise_if_error_event(chunk: ChatCompletionChunk) -> None:
    # The SDK parses any SSE data as a chunk; an error payload shows up as an extra field.
    extra: dict[str, Any] = chunk.model_extra or {}
    if extra.get("error"):
        raise _StreamErrorEvent


def _delta_text(chunk: ChatCompletionChunk) -> str:
    # Non-strict parsing leaves absent fields unset rather than failing, hence getattr.
    choices = getattr(chunk, "choices", None) or []
    for choice in choices:
        if getattr(choice, "index", 0) == 0:
            delta = getattr(choice, "delta", None)
            content = getattr(delta, "content", None)
            return content if isinstance(content, str) else ""
    return ""


def _provider_request_id(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, httpx.Response):
        request_id: str | None = response.headers.get("x-request-id")
        return request_id
    return None

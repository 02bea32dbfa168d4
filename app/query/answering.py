"""Turns a prepared question into an answer: JSON, or Server-Sent Events.

Every blocking step runs in a thread; the LLM is awaited. Whatever happens after tokens were
reserved ends in exactly one of `finish` (charge what was used, write history) or `abandon`
(give everything back), also when the visitor disconnects mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
from anyio import to_thread

from app.core.errors import LLMUnavailable
from app.core.metrics import LLM_SECONDS
from app.query import service
from app.query.schemas import DemoResponse, QueryResponse, Usage
from app.query.service import Prepared, QueryTools
from app.rag.llm import LLMError, StreamDelta, StreamUsage

log = logging.getLogger("app.query")

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    "Connection": "keep-alive",
}


def _llm_options(tools: QueryTools, prepared: Prepared) -> dict[str, Any]:
    chosen = prepared.asker.temperature
    temperature = tools.settings.LLM_TEMPERATURE if chosen is None else chosen
    return {"max_tokens": tools.settings.LLM_MAX_TOKENS, "temperature": temperature}


def response_body(
    prepared: Prepared, answer: str, input_tokens: int, output_tokens: int
) -> QueryResponse:
    fields: dict[str, Any] = {
        "answer": answer,
        "sources": [service.source_dict(h) for h in prepared.hits],
        "usage": Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        ),
        "session_id": prepared.session_id,
        "message_id": prepared.message_id,
        "mode": prepared.mode,
    }
    if prepared.demo_remaining is not None:
        return DemoResponse(**fields, demo_messages_remaining=prepared.demo_remaining)
    return QueryResponse(**fields)


async def _counted(tools: QueryTools, prepared: Prepared, answer: str) -> tuple[int, int]:
    """Tokens for answers that did not come with the provider's usage."""
    if prepared.mode == "fallback":
        return 0, 0
    output = await to_thread.run_sync(service.count_tokens, tools.embedder, answer)
    return prepared.estimated_input, output


async def answer_json(tools: QueryTools, prepared: Prepared) -> QueryResponse:
    db = tools.db
    if prepared.mode != "llm":
        answer = prepared.answer
        input_tokens, output_tokens = await _counted(tools, prepared, answer)
    else:
        started = time.perf_counter()
        try:
            completion = await tools.llm.complete(
                prepared.messages, **_llm_options(tools, prepared)
            )
        except (LLMError, asyncio.CancelledError) as exc:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(service.abandon, db, prepared)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("llm failed", extra={"reason": str(exc)})
            raise LLMUnavailable() from exc
        LLM_SECONDS.observe(time.perf_counter() - started)
        answer = completion.text
        if completion.input_tokens is None or completion.output_tokens is None:
            input_tokens, output_tokens = await _counted(tools, prepared, answer)
        else:
            input_tokens, output_tokens = completion.input_tokens, completion.output_tokens
    with anyio.CancelScope(shield=True):
        await to_thread.run_sync(service.finish, db, prepared, answer, input_tokens, output_tokens)
    return response_body(prepared, answer, input_tokens, output_tokens)


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


async def _pieces(prepared: Prepared) -> AsyncGenerator[StreamDelta | StreamUsage, None]:
    """A precomputed answer (extractive, fallback) streamed a few words at a time."""
    words = prepared.answer.split(" ")
    for start in range(0, len(words), 8):
        piece = " ".join(words[start : start + 8])
        yield StreamDelta(piece if start + 8 >= len(words) else piece + " ")
    yield StreamUsage(None, None)


async def answer_stream(tools: QueryTools, prepared: Prepared) -> AsyncIterator[bytes]:
    db = tools.db
    heartbeat = tools.settings.SSE_HEARTBEAT_SECONDS
    source: AsyncGenerator[StreamDelta | StreamUsage, None] = (
        tools.llm.stream(prepared.messages, **_llm_options(tools, prepared))
        if prepared.mode == "llm"
        else _pieces(prepared)
    )
    parts: list[str] = []
    usage: StreamUsage | None = None
    started = time.perf_counter()
    settled = False
    try:
        yield sse("sources", [service.source_dict(h) for h in prepared.hits])
        async with aclosing(source) as items:
            iterator = items.__aiter__()
            while True:
                next_item = asyncio.ensure_future(iterator.__anext__())
                try:
                    while True:
                        done, _ = await asyncio.wait({next_item}, timeout=heartbeat)
                        if done:
                            break
                        yield b": keep-alive\n\n"
                    item = next_item.result()
                except StopAsyncIteration:
                    break
                finally:
                    if not next_item.done():
                        next_item.cancel()
                if isinstance(item, StreamDelta):
                    if not parts and prepared.mode == "llm":
                        LLM_SECONDS.observe(time.perf_counter() - started)
                    parts.append(item.text)
                    yield sse("token", {"text": item.text})
                else:
                    usage = item
        answer = "".join(parts)
        if usage is not None and usage.input_tokens is not None and usage.output_tokens is not None:
            input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        else:
            input_tokens, output_tokens = await _counted(tools, prepared, answer)
        with anyio.CancelScope(shield=True):
            await to_thread.run_sync(
                service.finish, db, prepared, answer, input_tokens, output_tokens
            )
        settled = True
        yield sse(
            "done",
            {
                "usage": Usage(
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    total_tokens=input_tokens + output_tokens,
                ).model_dump(),
                "message_id": str(prepared.message_id),
                "session_id": prepared.session_id,
                "mode": prepared.mode,
                **(
                    {"demo_messages_remaining": prepared.demo_remaining}
                    if prepared.demo_remaining is not None
                    else {}
                ),
            },
        )
    except LLMError as exc:
        # A failed LLM call charges nothing, even if part of the answer was shown.
        log.warning("llm failed while streaming", extra={"reason": str(exc)})
        with anyio.CancelScope(shield=True):
            await to_thread.run_sync(service.abandon, db, prepared)
        settled = True
        error = LLMUnavailable()
        yield sse("error", error.body())
    finally:
        if not settled:
            # The visitor went away (or something unexpected happened) mid-answer.
            with anyio.CancelScope(shield=True):
                await _settle_partial(tools, prepared, parts)


async def _settle_partial(tools: QueryTools, prepared: Prepared, parts: list[str]) -> None:
    db = tools.db
    """What was generated before the stream ended early is charged (the provider billed it)
    and kept as an interrupted answer; with nothing generated, nothing is charged."""
    if not parts or prepared.mode != "llm":
        await to_thread.run_sync(service.abandon, db, prepared)
        return
    answer = "".join(parts)
    input_tokens, output_tokens = await _counted(tools, prepared, answer)
    await to_thread.run_sync(
        lambda: service.finish(db, prepared, answer, input_tokens, output_tokens, interrupted=True)
    )

"""Turns a prepared question into an answer: JSON, or Server-Sent Events.

Every blocking step runs in a thread; the LLM is awaited. Whatever happens after tokens were
reserved ends in exactly one of `finish` (charge what was used, write history) or `abandon`
(give everything back): also when the visitor disconnects, wherever that happens (a JSON
request's client leaving cancels its LLM call; a stream's client leaving before its first
byte gets the reservation back through `StreamedAnswer.close`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any

import anyio
from anyio import to_thread

from app.core.errors import LLMUnavailable
from app.core.metrics import LLM_SECONDS, observe_since
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


class Settlement:
    """Exactly one of `finish`/`abandon` for a prepared question, whatever ends it, and
    shielded from the cancellation that may be ending it."""

    def __init__(self, tools: QueryTools, prepared: Prepared):
        self.tools = tools
        self.prepared = prepared
        self.settled = False

    async def finish(
        self, answer: str, input_tokens: int, output_tokens: int, *, interrupted: bool = False
    ) -> None:
        if self.settled:
            return
        self.settled = True  # even if it fails: the sweep gives a stranded reservation back
        db, prepared = self.tools.db, self.prepared
        with anyio.CancelScope(shield=True):
            await to_thread.run_sync(
                lambda: service.finish(
                    db, prepared, answer, input_tokens, output_tokens, interrupted=interrupted
                )
            )

    async def abandon(self) -> None:
        if self.settled:
            return
        self.settled = True
        with anyio.CancelScope(shield=True):
            await to_thread.run_sync(service.abandon, self.tools.db, self.prepared)


ClientLeft = Callable[[], Awaitable[None]]


async def _watch(client_left: ClientLeft) -> None:
    # A failure to read the connection counts as the client being gone.
    with suppress(Exception):
        await client_left()


def _forget(task: asyncio.Future[Any]) -> None:
    """Cancel a task left behind, retrieving its outcome (no "never retrieved" warnings)."""
    task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
    task.cancel()


async def answer_json(
    tools: QueryTools, prepared: Prepared, client_left: ClientLeft
) -> QueryResponse | None:
    """The answer, or None when the client went away first (`client_left` returned): then
    the LLM call is cancelled, the reservation given back and nothing written."""
    settlement = Settlement(tools, prepared)
    watcher = asyncio.ensure_future(_watch(client_left))
    try:
        if prepared.mode != "llm":
            answer = prepared.answer
            input_tokens, output_tokens = await _counted(tools, prepared, answer)
        else:
            started = time.perf_counter()
            call = asyncio.ensure_future(
                tools.llm.complete(prepared.messages, **_llm_options(tools, prepared))
            )
            try:
                await asyncio.wait({call, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not call.done():  # the client left (or we are cancelled): stop the LLM
                    _forget(call)
            if not call.done() or call.cancelled():
                await settlement.abandon()
                return None
            try:
                completion = call.result()
            except LLMError as exc:
                await settlement.abandon()
                log.warning("llm failed", extra={"reason": str(exc)})
                raise LLMUnavailable() from exc
            LLM_SECONDS.observe(time.perf_counter() - started)
            observe_since("first_token", prepared.started)
            answer = completion.text
            if completion.input_tokens is None or completion.output_tokens is None:
                input_tokens, output_tokens = await _counted(tools, prepared, answer)
            else:
                input_tokens, output_tokens = completion.input_tokens, completion.output_tokens
        if watcher.done():  # gone while we counted: nobody will read the answer
            await settlement.abandon()
            return None
        await settlement.finish(answer, input_tokens, output_tokens)
        return response_body(prepared, answer, input_tokens, output_tokens)
    finally:
        _forget(watcher)
        # Cancelled, or anything unexpected: the reservation goes back.
        await settlement.abandon()


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


async def _pieces(prepared: Prepared) -> AsyncGenerator[StreamDelta | StreamUsage, None]:
    """A precomputed answer (extractive, fallback) streamed a few words at a time."""
    words = prepared.answer.split(" ")
    for start in range(0, len(words), 8):
        piece = " ".join(words[start : start + 8])
        yield StreamDelta(piece if start + 8 >= len(words) else piece + " ")
    yield StreamUsage(None, None)


class StreamedAnswer:
    """An answer as Server-Sent Events (`events()`), settled exactly once.

    The events' own `finally` settles when the stream ends early, but a generator that never
    started has no `finally` to run: Starlette cancels the response before its first
    iteration when the client left while the question was being prepared. So the response
    must call `close()` whatever happened (app/query/router.py does): it closes the events
    (running their `finally` if they are suspended mid-answer) and gives the reservation
    back if nothing settled it."""

    def __init__(self, tools: QueryTools, prepared: Prepared):
        self.tools = tools
        self.prepared = prepared
        self.settlement = Settlement(tools, prepared)
        self.events = self._events()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.events.aclose()
            await self.settlement.abandon()

    async def _events(self) -> AsyncGenerator[bytes, None]:
        tools, prepared, settlement = self.tools, self.prepared, self.settlement
        heartbeat = tools.settings.SSE_HEARTBEAT_SECONDS
        parts: list[str] = []
        try:
            yield sse("sources", [service.source_dict(h) for h in prepared.hits])
            source: AsyncGenerator[StreamDelta | StreamUsage, None] = (
                tools.llm.stream(prepared.messages, **_llm_options(tools, prepared))
                if prepared.mode == "llm"
                else _pieces(prepared)
            )
            usage: StreamUsage | None = None
            started = time.perf_counter()
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
                            # Let the LLM stream unwind (it hangs up on the provider) before
                            # `aclosing` closes it: closing a running generator fails.
                            next_item.cancel()
                            with anyio.CancelScope(shield=True):
                                await asyncio.wait({next_item})
                    if isinstance(item, StreamDelta):
                        if not parts and prepared.mode == "llm":
                            LLM_SECONDS.observe(time.perf_counter() - started)
                            observe_since("first_token", prepared.started)
                        parts.append(item.text)
                        yield sse("token", {"text": item.text})
                    else:
                        usage = item
            answer = "".join(parts)
            if (
                usage is not None
                and usage.input_tokens is not None
                and usage.output_tokens is not None
            ):
                input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
            else:
                input_tokens, output_tokens = await _counted(tools, prepared, answer)
            await settlement.finish(answer, input_tokens, output_tokens)
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
            await settlement.abandon()
            yield sse("error", LLMUnavailable().body())
        finally:
            if not settlement.settled:
                # The visitor went away (or something unexpected happened) mid-answer.
                with anyio.CancelScope(shield=True):
                    await self._settle_partial(parts)

    async def _settle_partial(self, parts: list[str]) -> None:
        """What was generated before the stream ended early is charged (the provider billed
        it) and kept as an interrupted answer; with nothing generated, nothing is charged."""
        if not parts or self.prepared.mode != "llm":
            await self.settlement.abandon()
            return
        answer = "".join(parts)
        input_tokens, output_tokens = await _counted(self.tools, self.prepared, answer)
        await self.settlement.finish(answer, input_tokens, output_tokens, interrupted=True)

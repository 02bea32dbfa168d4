"""LLMClient against a real loopback server speaking the chat-completions protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from app.core.config import Settings
from app.rag.llm import Completion, LLMClient, LLMError, StreamDelta, StreamUsage
from tests.fake_llm import (
    FakeLLMServer,
    completion_tokens,
    default_reply,
    prompt_tokens,
    split_pieces,
)

pytestmark = pytest.mark.timeout(30)

_T = TypeVar("_T")

MESSAGES = [
    {"role": "system", "content": "Answer only from the documents."},
    {"role": "user", "content": "What are the opening hours of the Lisbon office on weekends?"},
]
REPLY = "The Lisbon office opens at 9 and closes at 17 on Saturdays."


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_server(server: FakeLLMServer) -> None:
    server.reset()


def make_settings(server: FakeLLMServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "FIREWORKS_API_KEY": "test-key",
        "LLM_BASE_URL": server.base_url,
        "LLM_MODEL": "accounts/test/models/fake",
        "LLM_TIMEOUT_SECONDS": 0.5,
        "LLM_MAX_RETRIES": 2,
        "LLM_MAX_TOKENS": 256,
        "LLM_TEMPERATURE": 0.2,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def run_with_client(settings: Settings, body: Callable[[LLMClient], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        client = LLMClient(settings)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def collect(
    items: AsyncIterator[StreamDelta | StreamUsage],
) -> list[StreamDelta | StreamUsage]:
    return [item async for item in items]


async def complete(client: LLMClient) -> Completion:
    return await client.complete(MESSAGES, max_tokens=64, temperature=0.3)


def stream(client: LLMClient) -> AsyncGenerator[StreamDelta | StreamUsage, None]:
    return client.stream(MESSAGES, max_tokens=64, temperature=0.3)


# --- happy paths ---


def test_complete_returns_text_and_usage(server: FakeLLMServer) -> None:
    server.set_reply(REPLY)

    result = run_with_client(make_settings(server), complete)

    assert result == Completion(
        text=REPLY,
        input_tokens=prompt_tokens(MESSAGES),
        output_tokens=completion_tokens(REPLY),
    )


def test_complete_default_reply_echoes_question(server: FakeLLMServer) -> None:
    result = run_with_client(make_settings(server), complete)

    assert result.text == default_reply(MESSAGES)
    assert result.text == "Answer: What are the opening hours of the Lisbon"


def test_request_carries_model_params_messages_and_bearer_key(server: FakeLLMServer) -> None:
    settings = make_settings(server)

    run_with_client(settings, complete)

    (body,) = server.requests
    assert body["model"] == settings.LLM_MODEL
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.3
    assert body["messages"] == MESSAGES
    assert not body.get("stream")
    assert server.request_headers[0]["authorization"] == "Bearer test-key"
    # The SDK appends /v1/chat/completions to a base with /v1 stripped: same URL as OpenAI's.
    assert server.request_paths == ["/v1/chat/completions"]


def test_stream_yields_deltas_then_usage(server: FakeLLMServer) -> None:
    server.set_reply(REPLY)

    items = run_with_client(make_settings(server), lambda c: collect(stream(c)))

    *deltas, usage = items
    assert all(isinstance(d, StreamDelta) for d in deltas)
    assert len(deltas) == len(split_pieces(REPLY)) > 1
    assert "".join(d.text for d in deltas if isinstance(d, StreamDelta)) == REPLY
    assert usage == StreamUsage(
        input_tokens=prompt_tokens(MESSAGES), output_tokens=completion_tokens(REPLY)
    )
    (body,) = server.requests
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "accounts/test/models/fake"
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.3
    assert body["messages"] == MESSAGES
    assert server.request_headers[0]["authorization"] == "Bearer test-key"
    assert server.disconnects == 0


def test_omitted_usage_is_none(server: FakeLLMServer) -> None:
    server.set_reply(REPLY)
    server.omit_usage = True

    async def both(client: LLMClient) -> tuple[Completion, list[StreamDelta | StreamUsage]]:
        return await complete(client), await collect(stream(client))

    result, items = run_with_client(make_settings(server), both)

    assert result == Completion(text=REPLY, input_tokens=None, output_tokens=None)
    assert items[-1] == StreamUsage(input_tokens=None, output_tokens=None)
    assert "".join(i.text for i in items if isinstance(i, StreamDelta)) == REPLY


# --- retries ---


def test_500_then_success_is_retried(server: FakeLLMServer) -> None:
    server.set_reply(REPLY)
    server.fail_next(1, status=500)

    result = run_with_client(make_settings(server), complete)

    assert result.text == REPLY
    assert len(server.requests) == 2


def test_429_is_retried(server: FakeLLMServer) -> None:
    server.fail_next(2, status=429)

    result = run_with_client(make_settings(server), complete)

    assert result.text == default_reply(MESSAGES)
    assert len(server.requests) == 3


def test_persistent_500_fails_after_all_attempts(server: FakeLLMServer) -> None:
    server.fail_next(100, status=503)

    with pytest.raises(LLMError, match="503"):
        run_with_client(make_settings(server, LLM_MAX_RETRIES=2), complete)

    assert len(server.requests) == 3


def test_400_is_not_retried(server: FakeLLMServer) -> None:
    server.fail_next(5, status=400)

    with pytest.raises(LLMError, match="400"):
        run_with_client(make_settings(server), complete)

    assert len(server.requests) == 1


def test_timeout_raises_llm_error(server: FakeLLMServer) -> None:
    server.delay_seconds = 30  # never answers in time; the wall time is in bench/failfast.py

    with pytest.raises(LLMError, match="timed out"):
        run_with_client(make_settings(server, LLM_MAX_RETRIES=1), complete)

    # Each attempt gave up at its own timeout (the server never answered either).
    assert len(server.requests) == 2


def test_stream_retries_before_first_delta(server: FakeLLMServer) -> None:
    server.set_reply(REPLY)
    server.fail_next(1, status=502)

    items = run_with_client(make_settings(server), lambda c: collect(stream(c)))

    assert "".join(i.text for i in items if isinstance(i, StreamDelta)) == REPLY
    assert isinstance(items[-1], StreamUsage)
    assert len(server.requests) == 2


def test_stream_persistent_failure_raises_after_all_attempts(server: FakeLLMServer) -> None:
    server.fail_next(100, status=500)

    with pytest.raises(LLMError, match="500"):
        run_with_client(make_settings(server, LLM_MAX_RETRIES=1), lambda c: collect(stream(c)))

    assert len(server.requests) == 2


def test_stream_failure_after_first_delta_is_not_retried(server: FakeLLMServer) -> None:
    server.set_reply(REPLY)
    server.break_stream_after(2)
    seen: list[str] = []

    async def consume(client: LLMClient) -> None:
        async for item in stream(client):
            assert isinstance(item, StreamDelta)
            seen.append(item.text)

    with pytest.raises(LLMError, match="mid-stream"):
        run_with_client(make_settings(server), consume)

    assert seen == split_pieces(REPLY)[:2]
    assert len(server.requests) == 1


def run_against_transport(
    handler: Callable[[httpx.Request], httpx.Response],
    body: Callable[[LLMClient], Awaitable[_T]],
    **overrides: Any,
) -> tuple[_T | LLMError, int]:
    """For upstream misbehaviour the fake server does not produce: (result or error, calls)."""
    calls = 0

    def counting(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return handler(request)

    async def main() -> _T | LLMError:
        settings = Settings(
            _env_file=None,
            FIREWORKS_API_KEY="test-key",
            LLM_BASE_URL="https://llm.invalid/inference/v1",
            **overrides,
        )
        async with httpx.AsyncClient(transport=httpx.MockTransport(counting)) as http:
            try:
                return await body(LLMClient(settings, http_client=http))
            except LLMError as exc:
                return exc

    return asyncio.run(main()), calls


def _sse(*events: str) -> httpx.Response:
    content = "".join(f"data: {event}\n\n" for event in events).encode()
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=content)


_CHUNK = (
    '{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",'
    ' "choices": [{"index": 0, "delta": {"content": "Hi"}}]}'
)
_ERROR_EVENT = '{"error": {"message": "overloaded", "type": "server_error"}}'


def test_error_event_after_a_delta_raises_without_retry() -> None:
    outcome, calls = run_against_transport(
        lambda _: _sse(_CHUNK, _ERROR_EVENT), lambda c: collect(stream(c))
    )

    assert isinstance(outcome, LLMError)
    assert "mid-stream" in str(outcome)
    assert calls == 1


def test_error_event_before_any_delta_is_retried() -> None:
    responses = iter([_sse(_ERROR_EVENT), _sse(_CHUNK, "[DONE]")])

    outcome, calls = run_against_transport(lambda _: next(responses), lambda c: collect(stream(c)))

    assert outcome == [StreamDelta("Hi"), StreamUsage(input_tokens=None, output_tokens=None)]
    assert calls == 2


def test_non_api_200_is_an_error() -> None:
    def page(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/html"}, text="<html>proxy</html>")

    completed, _ = run_against_transport(page, complete, LLM_MAX_RETRIES=0)
    streamed, _ = run_against_transport(page, lambda c: collect(stream(c)), LLM_MAX_RETRIES=0)

    assert isinstance(completed, LLMError) and "unexpected response" in str(completed)
    assert isinstance(streamed, LLMError) and "unexpected response" in str(streamed)


# --- early exit by the consumer ---


def test_consumer_closing_stream_drops_upstream_connection(server: FakeLLMServer) -> None:
    server.token_delay_seconds = 0.2  # the whole answer would take seconds

    async def first_delta_then_stop(client: LLMClient) -> StreamDelta | StreamUsage:
        async with contextlib.aclosing(stream(client)) as items:
            async for item in items:
                return item
        raise AssertionError("no delta")

    first = run_with_client(make_settings(server), first_delta_then_stop)

    assert first == StreamDelta(split_pieces(default_reply(MESSAGES))[0])
    assert server.wait_for_disconnects(1, timeout=3)


def test_cancelled_consumer_drops_upstream_connection(server: FakeLLMServer) -> None:
    server.token_delay_seconds = 0.2

    async def cancel_mid_stream(client: LLMClient) -> None:
        got_first = asyncio.Event()

        async def consume() -> None:
            async for _ in stream(client):
                got_first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_first.wait(), timeout=3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run_with_client(make_settings(server), cancel_mid_stream)

    assert server.wait_for_disconnects(1, timeout=3)


# --- concurrency, configuration ---


def test_many_concurrent_streams(server: FakeLLMServer) -> None:
    server.token_delay_seconds = 0.02
    n = 40

    async def many(client: LLMClient) -> list[list[StreamDelta | StreamUsage]]:
        return await asyncio.gather(*(collect(stream(client)) for _ in range(n)))

    results = run_with_client(make_settings(server, LLM_TIMEOUT_SECONDS=10), many)

    expected = default_reply(MESSAGES)
    for items in results:
        assert "".join(i.text for i in items if isinstance(i, StreamDelta)) == expected
    assert len(server.requests) == n
    assert server.max_concurrent >= 32
    assert server.disconnects == 0


def test_uses_the_http_client_it_is_given(server: FakeLLMServer) -> None:
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(str(request.url))

    async def main() -> tuple[str, bool]:
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            client = LLMClient(make_settings(server), http_client=http)
            result = await complete(client)
            await client.aclose()
            # Not ours to close: the lifespan that created it does.
            return result.text, http.is_closed

    text, closed = asyncio.run(main())

    assert text == default_reply(MESSAGES)
    assert seen == [f"{server.base_url}/chat/completions"]
    assert closed is False


def test_without_api_key_is_constructible_but_unusable(server: FakeLLMServer) -> None:
    client = LLMClient(make_settings(server, FIREWORKS_API_KEY=None))
    assert client.configured is False
    assert client.model == "accounts/test/models/fake"

    with pytest.raises(LLMError, match="not configured"):
        asyncio.run(complete(client))
    with pytest.raises(LLMError, match="not configured"):
        asyncio.run(collect(stream(client)))
    asyncio.run(client.aclose())
    assert server.requests == []


def test_configured_with_api_key(server: FakeLLMServer) -> None:
    client = LLMClient(make_settings(server))
    assert client.configured is True
    asyncio.run(client.aclose())


def test_base_url_must_be_openai_style(server: FakeLLMServer) -> None:
    with pytest.raises(ValueError, match="/v1"):
        LLMClient(make_settings(server, LLM_BASE_URL=server.root_url))


def test_closed_client_refuses_calls(server: FakeLLMServer) -> None:
    async def main() -> None:
        client = LLMClient(make_settings(server))
        await client.aclose()
        with pytest.raises(LLMError, match="closed"):
            await complete(client)

    asyncio.run(main())
    assert server.requests == []


# --- the fake server itself (other tests rely on its protocol) ---


def test_fake_server_serves_both_paths_and_both_usage_styles(server: FakeLLMServer) -> None:
    server.set_reply("one two three")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
    with httpx.Client(timeout=5) as http:
        plain = http.post(f"{server.root_url}/chat/completions", json=body).json()
        streamed = http.post(f"{server.base_url}/chat/completions", json={**body, "stream": True})
        missing = http.post(f"{server.root_url}/nope", json=body)

    assert plain["choices"][0]["message"] == {"role": "assistant", "content": "one two three"}
    assert plain["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    # Without stream_options the usage rides on the finish chunk (Fireworks' default style).
    assert '"finish_reason": "stop"' in events[-2] and '"usage"' in events[-2]
    assert missing.status_code == 404

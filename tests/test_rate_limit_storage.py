"""Rate-limit counters in Redis: they carry the deployment's RATE_LIMIT_KEY_PREFIX, so
deployments (or test runs) sharing one Redis database neither count nor reset each other's
keys; and when Redis goes away the requests it guards answer 503 (never 500, never unchecked)
until it is back, in the same process."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from limits import parse
from pydantic import ValidationError
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.ratelimit import RateLimiter
from app.models import Document
from tests import docgen
from tests.factories import PASSWORD, create_chatbot, register, upload, wait_for_document
from tests.redisdb import REDIS_SERVER, delete_keys, requires_redis
from tests.tcp_proxy import TcpProxy

REDIS_DB = 12  # this file's own database index on the machine's Redis


@requires_redis()
def test_redis_counters_are_per_prefix_and_reset_deletes_only_its_own() -> None:
    run = secrets.token_hex(4)
    mine, theirs = f"cbp-limits-{run}-a", f"cbp-limits-{run}-b"
    url = f"{REDIS_SERVER}/{REDIS_DB}"
    ours, other = RateLimiter(url, mine), RateLimiter(url, theirs)
    client = redis.Redis.from_url(url)
    limit = parse("2/minute")
    try:
        assert [ours.hit(limit, "login", "alice").allowed for _ in range(3)] == [True, True, False]
        # The same limit and key under another prefix is another counter.
        assert other.hit(limit, "login", "alice").allowed
        assert list(client.scan_iter(match=f"{mine}:*"))
        assert list(client.scan_iter(match=f"{theirs}:*"))
        assert not list(client.scan_iter(match="LIMITS:*login*alice*"))

        ours.reset()
        assert list(client.scan_iter(match=f"{mine}:*")) == []
        assert ours.hit(limit, "login", "alice").allowed  # counting from zero again
        # The other deployment's count survived our reset: one hit left, then refused.
        assert [other.hit(limit, "login", "alice").allowed for _ in range(2)] == [True, False]
    finally:
        client.close()
        delete_keys(REDIS_DB, mine)
        delete_keys(REDIS_DB, theirs)


def test_memory_storage_takes_a_prefix_without_using_it() -> None:
    limiter = RateLimiter("memory://", "anything")
    limit = parse("1/minute")
    assert limiter.hit(limit, "k").allowed and not limiter.hit(limit, "k").allowed


@pytest.mark.parametrize("prefix", ["", "two words", "glob*", "x" * 65])
def test_key_prefix_must_be_a_plain_name(prefix: str) -> None:
    with pytest.raises(ValidationError, match="RATE_LIMIT_KEY_PREFIX"):
        Settings(RATE_LIMIT_KEY_PREFIX=prefix)


@pytest.fixture
def redis_behind_a_proxy(runtime) -> Iterator[TcpProxy]:  # type: ignore[no-untyped-def]
    """The app's limiter on the machine's Redis, through a proxy the test cuts and restores."""
    target = urlsplit(REDIS_SERVER)
    prefix = f"cbp-faults-{secrets.token_hex(4)}"
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        original = runtime.limiter
        runtime.limiter = RateLimiter(f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}", prefix)
        try:
            yield proxy
        finally:
            runtime.limiter = original
            delete_keys(REDIS_DB, prefix)


@requires_redis()
def test_redis_going_away_answers_503_then_the_same_process_recovers(
    client, runtime, redis_behind_a_proxy, db_session, tmp_path
) -> None:
    proxy = redis_behind_a_proxy
    tenant = register(client)  # counted in Redis
    bot = create_chatbot(client, tenant)
    key = client.get(f"/api/chatbots/{bot['id']}", headers=tenant.headers).json()["api_key"]
    path = docgen.make_txt(tmp_path / "hours.txt", "The shop opens at nine every morning.")
    documents = select(func.count()).select_from(Document).where(Document.chatbot_id == bot["id"])
    assert runtime.limiter.probes()["rate_limits"]() == "ok"

    proxy.cut()
    refused = [
        client.post("/auth/token", data={"username": tenant.username, "password": PASSWORD}),
        client.post(
            "/auth/register",
            json={
                "username": f"user_{secrets.token_hex(4)}",
                "password": PASSWORD,
                "customer_name": "Nobody",
                "contact_email": f"{secrets.token_hex(4)}@example.com",
            },
        ),
        client.post(
            f"/api/upload/{bot['id']}",
            files={"file": ("hours.txt", path.read_bytes(), "text/plain")},
            headers=tenant.headers,
        ),
    ]
    for response in refused:
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "rate_limiter_unavailable"
        assert response.headers["Retry-After"] == "5"
    public = client.post(
        f"/api/public/{bot['id']}/query", json={"question": "When?"}, headers={"X-API-Key": key}
    )
    assert public.status_code == 503, public.text
    assert public.json() == {
        "detail": "This chatbot cannot answer right now; please try again later.",
        "code": "rate_limiter_unavailable",
    }
    assert db_session.scalar(documents) == 0  # the refused upload left nothing
    with pytest.raises(ConnectionError):
        runtime.limiter.probes()["rate_limits"]()

    proxy.restore()
    signed_in = client.post("/auth/token", data={"username": tenant.username, "password": PASSWORD})
    assert signed_in.status_code == 200, signed_in.text
    document = upload(client, tenant, bot["id"], path)
    assert wait_for_document(client, tenant, bot["id"], document["id"])["status"] == "ready"
    answer = client.post(
        f"/api/public/{bot['id']}/query", json={"question": "When?"}, headers={"X-API-Key": key}
    )
    assert answer.status_code == 200, answer.text
    assert runtime.limiter.probes()["rate_limits"]() == "ok"

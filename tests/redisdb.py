"""The machine's Redis for tests that share limits between processes: each test uses its own
database index and a key prefix unique to the run, and deletes only its own keys."""

from __future__ import annotations

import os

import pytest
import redis

REDIS_SERVER = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _problem() -> str | None:
    try:
        redis.Redis.from_url(REDIS_SERVER, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"no Redis at {REDIS_SERVER} ({type(exc).__name__})"
    return None


def requires_redis(extra_problem: str | None = None) -> pytest.MarkDecorator:
    """Skip without Redis (or with `extra_problem`), except under REQUIRE_REDIS=1 (CI),
    where that is an error."""
    problem = extra_problem or _problem()
    if problem and os.environ.get("REQUIRE_REDIS") == "1":
        raise RuntimeError(f"REQUIRE_REDIS=1 but: {problem}")
    return pytest.mark.skipif(problem is not None, reason=problem or "")


def delete_keys(db: int, prefix: str) -> None:
    client = redis.Redis.from_url(f"{REDIS_SERVER}/{db}")
    try:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    finally:
        client.close()

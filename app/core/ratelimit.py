"""Rate limiting through the `limits` storage API: memory by default, Redis when configured."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from limits import RateLimitItem, parse, storage, strategies
from limits.errors import StorageError

from app.core.config import Settings
from app.core.errors import ServiceUnavailable


class RateLimiterUnavailable(ServiceUnavailable):
    """The shared counters (Redis) cannot be reached: the request is refused rather than let
    through unchecked (sign-in throttling must not turn off when Redis does)."""

    code = "rate_limiter_unavailable"
    default_detail = (
        "Rate limiting is unavailable right now, so the request was not processed; retry shortly."
    )
    public_detail = "This chatbot cannot answer right now; please try again later."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "5"})


@contextmanager
def storage_errors() -> Iterator[None]:
    """Turn the storage's failures (connection refused, timeout) into a 503."""
    try:
        yield
    except StorageError as exc:
        raise RateLimiterUnavailable() from exc


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int


# Storages whose keys carry a prefix (limits' Redis family); memory needs none.
_PREFIXED_SCHEMES = ("redis", "rediss", "valkey", "valkeys")
# A Redis call takes well under a millisecond; one that cannot connect or answer in this many
# seconds fails (503) instead of holding a request thread for the system's TCP timeout.
REDIS_TIMEOUT_SECONDS = 2.0
# The memory storage trims expired hits but keeps every key it has seen (one per chatbot, client
# IP and conversation): keys without a live hit are dropped this often.
IDLE_SWEEP_SECONDS = 60.0


class RateLimiter:
    """One per process; the counters live in the configured storage, shared by all processes
    that point at the same Redis, under `key_prefix` (so deployments can share one Redis,
    and `reset` deletes only this one's keys)."""

    def __init__(self, storage_url: str, key_prefix: str = "LIMITS"):
        scheme = storage_url.split("://", 1)[0].lower()
        family, _, variant = scheme.partition("+")
        options: dict[str, str | float] = {}
        if family in _PREFIXED_SCHEMES:
            options["key_prefix"] = key_prefix
            if variant in ("", "unix"):  # a single server (cluster and sentinel differ)
                options["socket_connect_timeout"] = REDIS_TIMEOUT_SECONDS
                options["socket_timeout"] = REDIS_TIMEOUT_SECONDS
        self.shared = scheme != "memory"
        self.storage = storage.storage_from_string(storage_url, wrap_exceptions=True, **options)
        self._limiter = strategies.MovingWindowRateLimiter(self.storage)
        self._next_sweep = time.time() + IDLE_SWEEP_SECONDS

    def hit(self, limit: RateLimitItem, *key: str) -> Decision:
        if time.time() >= self._next_sweep:
            self.forget_idle()
        with storage_errors():
            if self._limiter.hit(limit, *key):
                return Decision(True, 0)
            return Decision(False, self._retry_after(limit, *key))

    def clear(self, limit: RateLimitItem, *key: str) -> None:
        with storage_errors():
            self._limiter.clear(limit, *key)

    def heartbeat(self) -> str:
        """For /ready: the shared storage answers."""
        if not self.storage.check():
            raise ConnectionError("the rate-limit storage does not answer")
        return "ok"

    def probes(self) -> dict[str, Callable[[], str]]:
        """/ready checks the storage only when it is shared (memory is always there)."""
        return {"rate_limits": self.heartbeat} if self.shared else {}

    def _retry_after(self, limit: RateLimitItem, *key: str) -> int:
        stats = self._limiter.get_window_stats(limit, *key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def reset(self) -> None:
        self.storage.reset()

    def forget_idle(self, now: float | None = None) -> int:
        """Drop the memory storage's keys whose hits have all expired (Redis expires its own
        keys); returns how many were dropped."""
        now = time.time() if now is None else now
        self._next_sweep = now + IDLE_SWEEP_SECONDS
        if not isinstance(self.storage, storage.MemoryStorage):
            return 0
        events, locks = self.storage.events, self.storage.locks
        dropped = 0
        for key in list(events):
            with locks[key]:
                entries = events.get(key)
                # Newest first: the key is idle when even its newest hit has expired.
                if not entries or entries[0].expiry <= now:
                    events.pop(key, None)
                    dropped += 1
            if key not in events:
                locks.pop(key, None)
        return dropped


def login_limits(settings: Settings) -> tuple[RateLimitItem, RateLimitItem]:
    """(per username, per client IP): attempts in LOGIN_LOCKOUT_SECONDS."""
    window = f"{settings.LOGIN_LOCKOUT_SECONDS} seconds"
    return (
        parse(f"{settings.LOGIN_MAX_FAILURES}/{window}"),
        parse(f"{settings.LOGIN_MAX_ATTEMPTS_PER_IP}/{window}"),
    )

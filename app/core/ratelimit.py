"""Rate limiting through the `limits` storage API: memory by default, Redis when configured."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse, storage, strategies

from app.core.config import Settings


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int


class RateLimiter:
    """One per process; the counters live in the configured storage, shared by all processes
    that point at the same Redis."""

    def __init__(self, storage_url: str):
        self.storage = storage.storage_from_string(storage_url)
        self._limiter = strategies.MovingWindowRateLimiter(self.storage)

    def hit(self, limit: RateLimitItem, *key: str) -> Decision:
        if self._limiter.hit(limit, *key):
            return Decision(True, 0)
        return Decision(False, self._retry_after(limit, *key))

    def clear(self, limit: RateLimitItem, *key: str) -> None:
        self._limiter.clear(limit, *key)

    def _retry_after(self, limit: RateLimitItem, *key: str) -> int:
        stats = self._limiter.get_window_stats(limit, *key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def reset(self) -> None:
        self.storage.reset()


def login_limits(settings: Settings) -> tuple[RateLimitItem, RateLimitItem]:
    """(per username, per client IP): attempts in LOGIN_LOCKOUT_SECONDS."""
    window = f"{settings.LOGIN_LOCKOUT_SECONDS} seconds"
    return (
        parse(f"{settings.LOGIN_MAX_FAILURES}/{window}"),
        parse(f"{settings.LOGIN_MAX_ATTEMPTS_PER_IP}/{window}"),
    )

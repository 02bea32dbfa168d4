"""Waiting for a state the code under test reaches: poll it, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    read: Callable[[], T], ok: Callable[[T], object], what: str, timeout: float = 15.0
) -> T:
    """Poll `read` until `ok` holds for its value, and return that value; fail after
    `timeout` seconds, saying what was last read."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {value!r}"
        time.sleep(0.02)

"""Bounded waits on conditions the tests cannot be told about: files a detached process writes,
answers of a socket that is busy for a moment. Prefer an event (a process's output line, a
trio.Event) whenever there is one; this polls, at a short interval, for a bounded time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T], what: str, *, timeout: float, interval: float = 0.05
) -> T:  # fmt: skip
    """*check()*'s first truthy result, polled every *interval* s; AssertionError naming *what*
    after *timeout* s. An AssertionError raised by *check* itself ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)

"""Test doubles shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations


class Sleeps:
    """Injectable sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)

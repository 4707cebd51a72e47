"""Real fedstore nodes for hostile-peer tests, each as on its own machine.

Every node gets its own data directory and its own filesystem-backend root,
and the chain ``filesystem,bitswap`` (what a node on a separate machine has):
what one node stores can reach another only over bitswap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import trio

from fedstore.config import NodeConfig
from fedstore.node import Node, open_node
from fedstore.node.events import NodeEvent

E = TypeVar("E", bound=NodeEvent)


class Events:
    """Collects node events; ``wait`` blocks (bounded) until a matching one arrives."""

    def __init__(self) -> None:
        self.items: list[NodeEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: NodeEvent) -> None:
        self.items.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.items if isinstance(e, kind)]

    async def wait(
        self, kind: type[E], pred: Callable[[E], bool] = lambda e: True, timeout: float = 20.0
    ) -> E:
        with trio.fail_after(timeout):
            while True:
                for e in self.of(kind):
                    if pred(e):
                        return e
                await self._changed.wait()

    async def until(self, cond: Callable[[], bool], timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not cond():
                await self._changed.wait()


def weights(seed: int, size: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(size).astype(np.float32)}


def machine_config(tmp_path: Path, name: str, **kw: Any) -> NodeConfig:
    """A node config with its own data directory and filesystem root (a separate machine)."""
    base = NodeConfig(
        role="trainer",
        data_dir=tmp_path / name,
        backends=("filesystem", "bitswap"),
        reannounce_interval=0,
        head_timeout=3.0,
        connect_timeout=5.0,
        settings={"FEDSTORE_FS_ROOT": str(tmp_path / f"{name}-objects")},
    )
    return replace(base, **kw)


@asynccontextmanager
async def machine(tmp_path: Path, name: str, **kw: Any) -> AsyncIterator[tuple[Node, Events]]:
    events = Events()
    async with open_node(machine_config(tmp_path, name, **kw), on_event=events) as node:
        yield node, events

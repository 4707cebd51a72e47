"""The backend conformance suite on bitswap inside a real fedstore node on loopback.

Each test gets a running node (its own data directory and filesystem root,
the ``filesystem,bitswap`` chain a node builds) listening on 127.0.0.1; the
backend under test is that node's bitswap, exactly as the node built it.
(A second connected node per test would cost ~0.8 s x 22 tests here; the
transfers between nodes are covered by tests/test_write_policy_e2e.py and
tests/test_bitswap.py, which also runs the suite on a bare py-libp2p host.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from fedstore.backends import BackendContext, StorageBackend
from fedstore.backends.testing import BackendConformance
from fedstore.config import NodeConfig
from fedstore.node import open_node


def config(tmp_path: Path, name: str) -> NodeConfig:
    return NodeConfig(
        role="trainer",
        data_dir=tmp_path / name,
        backends=("filesystem", "bitswap"),
        settings={"FEDSTORE_FS_ROOT": str(tmp_path / f"{name}-fsroot")},
        reannounce_interval=0,
        head_timeout=5.0,
        connect_timeout=5.0,
    )


class TestBitswapInANode(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[StorageBackend]:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(open_node(config(tmp_path, "a")))
            backend = a.chain.get("bitswap")
            assert backend.keeps_local_copy
            yield backend

    @pytest.fixture
    async def backend_context(self, tmp_path: Path) -> AsyncIterator[BackendContext]:
        # Fresh backends run their own lifespan, so they need a host of their own:
        # a second node's (only the construction and lifespan checks ask for it).
        async with open_node(config(tmp_path, "b")) as b:
            yield BackendContext(data_dir=tmp_path / "fresh", host=b.host)

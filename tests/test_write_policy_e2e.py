"""The default node chain across "machines": large payloads and checkpoints reach peers.

Two real nodes on 127.0.0.1, each with its own data directory AND its own
filesystem-backend root (as on separate machines: nothing is shared on disk),
with the chain a node builds by default (``filesystem,bitswap``). Whatever a
node adds through its chain must be servable over bitswap:

* a ``publish`` above the inline limit travels by CID and is fetched by the
  subscriber from the publisher over bitswap;
* a checkpoint saved by one node is synced by the other over bitswap;
* a federation update stored with ``NodePeer.put_blob`` is fetched by CID.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import numpy as np
import trio

from fedstore.config import NodeConfig
from fedstore.federation.nodepeer import NodePeer
from fedstore.node import Node, open_node
from fedstore.p2p.messages import ANNOUNCE_TOPIC, TRAINING_TOPIC

#: the size of the model whose federation failed every round across separate roots
PAYLOAD = 1_280_000


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


@asynccontextmanager
async def two_machines(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_node(config(tmp_path, "a")))
        b = await stack.enter_async_context(open_node(config(tmp_path, "b")))
        assert a.chain.names == b.chain.names == ["filesystem", "bitswap"]
        await b.connect(a.addrs()[0])
        yield a, b


async def test_large_publish_reaches_a_peer_with_its_own_root(tmp_path: Path) -> None:
    async with two_machines(tmp_path) as (a, b):
        assert a.config.inline_limit < PAYLOAD
        await a.join(TRAINING_TOPIC)
        async with b.subscribe(TRAINING_TOPIC) as sub:
            await a.host.wait_for_mesh(b.peer_id, TRAINING_TOPIC)
            await b.host.wait_for_mesh(a.peer_id, TRAINING_TOPIC)
            data = os.urandom(PAYLOAD)
            sent = await a.publish(TRAINING_TOPIC, data)
            assert sent.cid is not None
            assert not await b.chain.get("filesystem").has(sent.cid)  # B's root is its own
            with trio.fail_after(20):
                sender, got = await sub.__anext__()
        assert (sender, got) == (a.peer_id, data)


async def test_checkpoint_syncs_over_bitswap_with_separate_roots(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    arrays = {"w": rng.standard_normal((400, 800)).astype(np.float32)}  # ~1.28 MB
    async with two_machines(tmp_path) as (a, b):
        await b.host.wait_for_mesh(a.peer_id, ANNOUNCE_TOPIC)
        rec = await a.save_checkpoint(1, arrays)
        pins = {p.backend: p.state for p in await a.catalog.pins_for(rec.cid)}
        assert pins == {"filesystem": "pinned", "bitswap": "pinned"}
        assert not await b.chain.get("filesystem").has(rec.cid)
        with trio.fail_after(30):
            head = await b.sync()
        assert head is not None and (head.round, head.cid) == (1, rec.cid)
        loaded = await b.load_checkpoint(1)
        assert np.array_equal(loaded.arrays["w"], arrays["w"])


async def test_federation_update_by_cid_across_roots(tmp_path: Path) -> None:
    async with two_machines(tmp_path) as (a, b):
        update = os.urandom(PAYLOAD)
        cid = await NodePeer(a).put_blob(update)
        with trio.fail_after(20):
            got = await NodePeer(b).get_blob(cid, max_size=len(update))
        assert got == update

"""Backends that serve peers (keeps_local_copy) get a copy of every checkpoint the node holds."""

from __future__ import annotations

from pathlib import Path

from fedstore.backends import BackendChain, BackendContext, default_backend_names
from fedstore.backends.memory import MemoryBackend
from fedstore.backends.testing import sample_bytes
from fedstore.catalog import Catalog
from fedstore.ipld.cid import cid_of_bytes
from fedstore.node.replication import keep_local_copies, replicate


class ServingBackend(MemoryBackend):
    keeps_local_copy = True


class BrokenServing(ServingBackend):
    async def add(self, source, **kw):  # type: ignore[no-untyped-def,override]
        from fedstore.errors import UnavailableError

        raise UnavailableError("block store full", backend=self.name)


async def test_replicate_also_fills_serving_backends(tmp_path: Path) -> None:
    data = sample_bytes(300_000, "serve")
    path = tmp_path / "ckpt.fsck"
    path.write_bytes(data)
    cid = cid_of_bytes(data)
    fs, peers = MemoryBackend("filesystem"), ServingBackend("bitswap")
    with Catalog.open(tmp_path / "node") as catalog:
        result = await replicate(path, cid, BackendChain([fs, peers]), catalog)
        assert result.stored_on == "filesystem"
        assert cid in fs.objects and cid in peers.objects
        states = {p.backend: p.state for p in catalog.pins_for(cid)}
        assert states == {"filesystem": "pinned", "bitswap": "pinned"}


async def test_local_copy_failure_is_recorded_not_raised(tmp_path: Path) -> None:
    data = b"checkpoint bytes"
    path = tmp_path / "c"
    path.write_bytes(data)
    cid = cid_of_bytes(data)
    with Catalog.open(tmp_path / "node") as catalog:
        outcomes = await keep_local_copies(
            BackendChain([MemoryBackend("filesystem"), BrokenServing("bitswap")]),
            path,
            cid,
            catalog,
        )
        assert [(o.backend, o.state) for o in outcomes] == [("bitswap", "failed")]
        assert "block store full" in (catalog.pins_for(cid)[0].last_error or "")


class _StandInHost:
    """Enough of a node's host for detection (no backend is built from it here)."""

    peer_id = "12D3KooWstandin"
    libp2p_host = None

    def connected_peers(self) -> list[str]:
        return []


def test_node_default_chain_ends_with_the_peers(tmp_path: Path) -> None:
    env = {"IPFS_PATH": str(tmp_path / "none")}
    in_node = BackendContext(data_dir=tmp_path / "node", host=_StandInHost())  # type: ignore[arg-type]
    assert default_backend_names(env) == ["filesystem"]
    assert default_backend_names(env, in_node) == ["filesystem", "bitswap"]
    assert default_backend_names({**env, "PINATA_JWT": "x"}, in_node) == [
        "pinata",
        "filesystem",
        "bitswap",
    ]


class CountingServing(ServingBackend):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.adds = 0

    async def add(self, source, **kw):  # type: ignore[no-untyped-def,override]
        self.adds += 1
        return await super().add(source, **kw)


async def test_complete_local_copies_fills_what_a_crash_left_out(tmp_path: Path) -> None:
    import numpy as np

    from fedstore.node.replication import complete_local_copies
    from fedstore.store import LocalStore

    node = tmp_path / "node"
    rng = np.random.default_rng(1)
    with LocalStore(node) as store:  # three rounds saved; their bitswap copies never finished
        recs = [
            store.save(r, {"w": rng.standard_normal(300).astype(np.float32)}) for r in (1, 2, 3)
        ]
    catalog = Catalog.open(node)
    catalog.set_pin(recs[2].cid, "bitswap", "pending")  # killed mid-copy
    catalog.set_pin(recs[0].cid, "bitswap", "pinned")  # this one was done
    peers = CountingServing("bitswap")
    await peers.add((node / recs[0].path).read_bytes())  # ...and really is there
    peers.adds = 0
    chain = BackendChain([MemoryBackend("filesystem"), peers])

    head_only = await complete_local_copies(chain, catalog, limit=1)
    assert [(o.cid, o.state) for o in head_only] == [(recs[2].cid, "pinned")]
    assert recs[2].cid in peers.objects and peers.adds == 1

    rest = await complete_local_copies(chain, catalog)
    assert [(o.cid, o.state) for o in rest] == [(recs[1].cid, "pinned")]
    assert all(r.cid in peers.objects for r in recs) and peers.adds == 2
    assert {r.cid: catalog.pins_for(r.cid)[0].state for r in recs} == dict.fromkeys(
        (r.cid for r in recs), "pinned"
    )
    assert await complete_local_copies(chain, catalog) == []  # nothing left: no writes
    assert peers.adds == 2
    catalog.close()


async def test_complete_local_copies_does_not_rewrite_what_is_held(tmp_path: Path) -> None:
    import numpy as np

    from fedstore.node.replication import complete_local_copies
    from fedstore.store import LocalStore

    node = tmp_path / "node"
    with LocalStore(node) as store:
        rec = store.save(1, {"w": np.zeros(10, np.float32)})
    peers = CountingServing("bitswap")
    await peers.add((node / rec.path).read_bytes())
    peers.adds = 0
    catalog = Catalog.open(node)  # held, but no row (saved before rows were kept)
    outcomes = await complete_local_copies(BackendChain([peers]), catalog)
    assert [(o.backend, o.state) for o in outcomes] == [("bitswap", "pinned")]
    assert peers.adds == 0 and catalog.pins_for(rec.cid)[0].state == "pinned"
    catalog.close()


async def test_node_start_completes_local_copies_before_serving_its_head(tmp_path: Path) -> None:
    import numpy as np

    from fedstore.config import NodeConfig
    from fedstore.node import open_node
    from fedstore.node.events import NodeEvent, Resumed
    from fedstore.store import LocalStore

    node = tmp_path / "node"
    with LocalStore(node) as store:
        rec = store.save(5, {"w": np.ones(100, np.float32)})
    peers = ServingBackend("bitswap")
    chain = BackendChain([MemoryBackend("filesystem"), peers])
    events: list[NodeEvent] = []
    config = NodeConfig(data_dir=node, reannounce_interval=0)
    async with open_node(config, chain=chain, on_event=events.append):
        assert Resumed(5) in events
        assert rec.cid in peers.objects  # before the node answered anyone's head request
        with Catalog.open(node) as catalog:
            pins = {p.backend: p.state for p in catalog.pins_for(rec.cid)}
        assert pins == {"bitswap": "pinned"}

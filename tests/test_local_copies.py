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
    catalog = Catalog.open(tmp_path / "node")
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
    catalog = Catalog.open(tmp_path / "node")
    outcomes = await keep_local_copies(
        BackendChain([MemoryBackend("filesystem"), BrokenServing("bitswap")]), path, cid, catalog
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

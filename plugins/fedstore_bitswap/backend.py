"""The ``bitswap`` storage backend: checkpoints from and to connected peers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Self

from fedstore.backends import (
    BackendContext,
    Detected,
    Health,
    Source,
    StorageBackend,
    StoredObject,
    aclosing_stream,
)
from fedstore.errors import FedstoreError, NotConfiguredError, UnavailableError
from fedstore.ipld.cid import DagParams, parse_cid

if TYPE_CHECKING:
    from fedstore_bitswap.service import BitswapService

__all__ = ["BitswapBackend"]


class BitswapBackend(StorageBackend):
    """Fetch CIDs from connected peers over bitswap; serve this node's blocks to them.

    * ``add`` cuts the file into its UnixFS blocks (the CID ``ipfs add``
      gives) and keeps them in the node's block store, from where peers
      fetch them; it never touches the network.
    * ``fetch`` reads the local block store first and asks connected peers
      for what is missing (see :mod:`fedstore_bitswap.fetch`). Every block is
      verified against its CID as it arrives; the chain verifies the whole
      file again.
    * ``has`` answers for the local block store only.
    * ``unpin`` forgets that the file is complete here (its blocks stay
      until removed); ``pin`` succeeds when the file is held.
    * ``health`` reports the connected peers.

    Built only inside a running node: :meth:`create` needs the node's host
    and data directory in its context (else
    :class:`~fedstore.errors.NotConfiguredError`), and the node runs
    :meth:`lifespan` (the protocol handlers) for its lifetime. It joins the
    default chain there, last (priority 0). No settings.
    """

    name = "bitswap"
    supports_pinning = True
    keeps_local_copy = True

    def __init__(self, service: BitswapService) -> None:
        self.service = service

    @classmethod
    def create(cls, settings: Mapping[str, str], ctx: BackendContext) -> Self:
        from fedstore_bitswap.service import NOT_IN_NODE, BitswapService

        if ctx.host is None or ctx.data_dir is None:
            raise NotConfiguredError(NOT_IN_NODE, backend="bitswap")
        return cls(
            BitswapService(ctx.host.libp2p_host, ctx.data_dir, peers=ctx.host.connected_peers)
        )

    @classmethod
    def detect(cls, settings: Mapping[str, str], ctx: BackendContext) -> Detected | None:
        """Inside a running node only, last (priority 0): the peers."""
        return Detected(0, "inside a running node: the peers") if ctx.in_node else None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Bitswap's protocol handlers on the node's host, for as long as it is open."""
        async with self.service.running():
            yield

    def __repr__(self) -> str:
        return f"<BitswapBackend peer={self.service.peer_id}>"

    async def add(
        self,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        try:
            summary = await self.service.add(source, DagParams.kubo(cid_version))
        except OSError as exc:
            raise UnavailableError(
                f"bitswap: cannot store blocks under {self.service.store.root}: "
                f"{exc.strerror or exc}",
                backend=self.name,
            ) from exc
        return StoredObject(cid=summary.cid, size=summary.size)

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        parsed = parse_cid(cid)
        try:
            # closed with this generator, so the fetch's cleanup (wants, tasks) runs now
            async with aclosing_stream(self.service.fetch(parsed)) as stream:
                async for chunk in stream:
                    yield chunk
        except FedstoreError:
            raise
        except OSError as exc:
            raise UnavailableError(
                f"bitswap: block store error while fetching {cid}: {exc.strerror or exc}",
                backend=self.name,
            ) from exc

    async def has(self, cid: str) -> bool:
        return await self.service.has(parse_cid(cid))

    async def unpin(self, cid: str, *, backend_ref: str | None = None) -> None:
        import trio

        text = str(parse_cid(cid))
        await trio.to_thread.run_sync(self.service.store.unmark_file, text)

    async def health(self) -> Health:
        peers = self.service.peers()
        return Health(
            reachable=True,
            detail=f"{len(peers)} peer(s) connected",
            extra={"peers": str(len(peers)), "peer_id": self.service.peer_id},
        )

"""The ``bitswap`` storage backend: checkpoints from and to connected peers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Self

from fedstore.backends import aclosing_stream
from fedstore.backends.base import Health, Source, StorageBackend, StoredObject
from fedstore.errors import FedstoreError, UnavailableError
from fedstore.ipld.cid import DagParams, parse_cid
from fedstore_bitswap.service import BitswapService, attach, find_service

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

    Built only inside a running node: :meth:`attach` (the node calls it
    with its host) must be active, else ``from_env`` raises
    :class:`~fedstore.errors.NotConfiguredError`.
    """

    name = "bitswap"
    supports_pinning = True
    keeps_local_copy = True
    #: The node's hook: ``async with BitswapBackend.attach(host, data_dir, peers=...)``.
    attach = staticmethod(attach)

    def __init__(self, service: BitswapService) -> None:
        self.service = service

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        return cls(find_service(env))

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

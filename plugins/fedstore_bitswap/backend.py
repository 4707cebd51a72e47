"""The ``bitswap`` storage backend: checkpoints from and to connected peers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Self

from fedstore.backends import (
    BackendContext,
    Detected,
    Health,
    Setting,
    Source,
    StorageBackend,
    StoredObject,
    aclosing_stream,
    lifespan_nursery,
)
from fedstore.errors import FedstoreError, NotConfiguredError, NotFoundError, UnavailableError
from fedstore.ipld.cid import DagParams, parse_cid

if TYPE_CHECKING:
    from fedstore_bitswap.collect import CollectReport
    from fedstore_bitswap.service import BitswapService

__all__ = ["BitswapBackend", "CACHE_BYTES", "CACHE_TTL", "GC_INTERVAL"]

log = logging.getLogger("fedstore.backends.bitswap")

CACHE_TTL = Setting(
    "FEDSTORE_BITSWAP_CACHE_TTL",
    "600",
    "seconds the block store keeps what is not pinned (files fetched from peers, payloads "
    "sent by reference) before collecting it",
    kind="duration",
    minimum=1,
    maximum=30 * 86400,
)
CACHE_BYTES = Setting(
    "FEDSTORE_BITSWAP_CACHE_BYTES",
    str(256 << 20),
    "most bytes the block store keeps of what is not pinned; the oldest go first",
    kind="int",
    minimum=0,
)
GC_INTERVAL = Setting(
    "FEDSTORE_BITSWAP_GC_INTERVAL",
    "60",
    "seconds between collections of the block store's unpinned data",
    kind="duration",
    minimum=0.1,
    maximum=86400,
)
#: labels of an ``add`` that make it transient (a payload sent by reference, not kept)
TRANSIENT_LABEL = "topic"


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
    * ``add`` pins the file (kept until unpinned), except a payload added
      with a ``topic`` label (a message sent by reference, as
      ``Node.publish`` does): that one is a cache entry, served to peers for
      ``FEDSTORE_BITSWAP_CACHE_TTL`` seconds. Files fetched from peers are
      cache entries too.
    * ``pin`` keeps a held file; ``unpin`` stops keeping it and forgets that
      it is complete here (its blocks become collectable).
    * The lifespan collects the cache every ``FEDSTORE_BITSWAP_GC_INTERVAL``
      seconds: older than the TTL, or beyond ``FEDSTORE_BITSWAP_CACHE_BYTES``
      (oldest first), it goes (:mod:`fedstore_bitswap.collect`).
    * ``health`` reports the connected peers.

    Built only inside a running node: :meth:`create` needs the node's host
    and data directory in its context (else
    :class:`~fedstore.errors.NotConfiguredError`), and the node runs
    :meth:`lifespan` (the protocol handlers) for its lifetime. It joins the
    default chain there, last (priority 0). Its settings bound the block
    store's cache of what is not pinned.
    """

    name = "bitswap"
    supports_pinning = True
    keeps_local_copy = True
    settings = (CACHE_TTL, CACHE_BYTES, GC_INTERVAL)

    def __init__(
        self,
        service: BitswapService,
        *,
        cache_ttl: float = 600.0,
        cache_bytes: int = 256 << 20,
        gc_interval: float = 60.0,
    ) -> None:
        self.service = service
        self.cache_ttl = cache_ttl
        self.cache_bytes = cache_bytes
        self.gc_interval = gc_interval

    @classmethod
    def create(cls, settings: Mapping[str, str], ctx: BackendContext) -> Self:
        from fedstore_bitswap.service import NOT_IN_NODE, BitswapService

        if ctx.host is None or ctx.data_dir is None:
            raise NotConfiguredError(NOT_IN_NODE, backend="bitswap")
        return cls(
            BitswapService(ctx.host.libp2p_host, ctx.data_dir, peers=ctx.host.connected_peers),
            cache_ttl=CACHE_TTL.number(settings),
            cache_bytes=CACHE_BYTES.integer(settings),
            gc_interval=GC_INTERVAL.number(settings),
        )

    @classmethod
    def detect(cls, settings: Mapping[str, str], ctx: BackendContext) -> Detected | None:
        """Inside a running node only, last (priority 0): the peers."""
        return Detected(0, "inside a running node: the peers") if ctx.in_node else None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Bitswap's protocol handlers on the node's host, and the collector of the block
        store's cache, for as long as it is open."""
        async with self.service.running(), lifespan_nursery() as nursery:
            nursery.start_soon(self._collect_forever)
            yield

    async def collect(self) -> CollectReport:
        """Collect the block store's cache now (see :mod:`fedstore_bitswap.collect`)."""
        import functools

        import trio

        from fedstore_bitswap.collect import MIN_AGE, collect

        run = functools.partial(
            collect,
            self.service.store,
            grace=self.cache_ttl,
            max_cache_bytes=self.cache_bytes,
            min_age=min(MIN_AGE, self.cache_ttl),
        )
        report = await trio.to_thread.run_sync(run)
        if report.removed_blocks:
            log.info(
                "bitswap: collected %d block(s), %d bytes; cache %d bytes, pinned %d bytes",
                report.removed_blocks,
                report.removed_bytes,
                report.cache_bytes,
                report.pinned_bytes,
            )
        return report

    async def _collect_forever(self) -> None:
        import trio

        while True:
            await trio.sleep(self.gc_interval)
            try:
                await self.collect()
            except (OSError, FedstoreError) as exc:  # try again next time
                log.warning("bitswap: collecting the block store failed: %s", exc)

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
        if not (labels and TRANSIENT_LABEL in labels):
            await self._run(self.service.store.pin_file, summary.cid)
        return StoredObject(cid=summary.cid, size=summary.size)

    async def _run(self, fn: Callable[[str], object], cid: str) -> None:
        import trio

        try:
            await trio.to_thread.run_sync(fn, cid)
        except OSError as exc:
            raise UnavailableError(
                f"bitswap: block store error for {cid}: {exc.strerror or exc}", backend=self.name
            ) from exc

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        text = str(parse_cid(cid))
        if not await self.has(text):
            raise NotFoundError(f"bitswap: cannot pin {cid}: not held", backend=self.name)
        await self._run(self.service.store.pin_file, text)
        return StoredObject(cid=cid, size=-1)

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
        text = str(parse_cid(cid))
        await self._run(self.service.store.unpin_file, text)
        await self._run(self.service.store.unmark_file, text)

    async def health(self) -> Health:
        peers = self.service.peers()
        return Health(
            reachable=True,
            detail=f"{len(peers)} peer(s) connected",
            extra={"peers": str(len(peers)), "peer_id": self.service.peer_id},
        )

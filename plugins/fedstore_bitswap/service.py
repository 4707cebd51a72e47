"""The bitswap service of one node: py-libp2p's bitswap on the node's host and block store.

Bitswap needs a live libp2p host, so it exists only inside a running node.
The node builds the ``bitswap`` backend with a
:class:`~fedstore.backends.BackendContext` carrying its host and data
directory, and runs the backend's lifespan (:meth:`BitswapService.running`)
for as long as it runs::

    backend = BitswapBackend.create(settings, BackendContext(data_dir, host=node_host))
    async with backend.lifespan():   # protocol handlers registered on the host
        ...

:func:`attach` does both for a bare py-libp2p host (tests, benchmarks).
There is no process-wide registry: each backend holds its own service.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from fedstore.backends import Source, aclosing_stream, lifespan_nursery
from fedstore.errors import ConfigError
from fedstore.ipld.blocks import DagSummary
from fedstore.ipld.cid import DagParams, ParsedCid, parse_cid
from fedstore_bitswap.blockstore import BlockStore
from fedstore_bitswap.engine import FedstoreBitswapClient
from fedstore_bitswap.fetch import DagFetch, FetchStats
from fedstore_bitswap.limits import BitswapLimits

__all__ = ["NOT_IN_NODE", "BitswapService", "attach"]

log = logging.getLogger("fedstore.backends.bitswap")

NOT_IN_NODE = (
    "bitswap runs only inside a running fedstore node (it needs the node's libp2p host); "
    "use 'fedstore node', or another backend for one-off commands"
)


def _raw_host(host: Any) -> Any:
    """Accept fedstore's P2PHost (``libp2p_host``) or a py-libp2p host."""
    return getattr(host, "libp2p_host", host)


class BitswapService:
    """Bitswap on one host, over the block store in ``<data_dir>/blocks``."""

    def __init__(
        self,
        host: Any,
        data_dir: str | os.PathLike[str],
        *,
        peers: Callable[[], Iterable[Any]] | None = None,
        limits: BitswapLimits | None = None,
    ) -> None:
        self.host = _raw_host(host)
        self.data_dir = Path(data_dir)
        self.limits = limits or BitswapLimits()
        self.store = BlockStore(self.data_dir / "blocks")
        self.engine = FedstoreBitswapClient(self.host, self.store, self.limits, peers)
        #: Statistics of the most recent fetch (None before the first).
        self.last_fetch: FetchStats | None = None
        self._running = False

    def __repr__(self) -> str:
        return f"<BitswapService peer={self.peer_id} data_dir={str(self.data_dir)!r}>"

    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    def peers(self) -> list[str]:
        """Connected peers that may speak bitswap."""
        return [str(p) for p in self.engine.bitswap_peers()]

    async def add(self, source: Source, params: DagParams) -> DagSummary:
        """Store every block of *source*'s DAG and mark the file complete (served from now on)."""
        src: Any = bytes(source) if isinstance(source, bytearray | memoryview) else source
        summary = await trio.to_thread.run_sync(self.store.put_file, src, params)
        await self.engine.notify_stored()  # peers already asking for these blocks
        return summary

    async def has(self, cid: str | ParsedCid) -> bool:
        text = str(cid if isinstance(cid, ParsedCid) else parse_cid(cid))
        return await trio.to_thread.run_sync(self.store.has_file, text)

    async def fetch(self, cid: str | ParsedCid) -> AsyncIterator[bytes]:
        """Yield the file bytes of *cid* from the local store and connected peers."""
        root = cid if isinstance(cid, ParsedCid) else parse_cid(cid)
        fetch = DagFetch(self.engine, root, self.limits)
        self.last_fetch = fetch.stats
        async with aclosing_stream(fetch.run()) as chunks:
            async for chunk in chunks:
                yield chunk

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve and fetch over the host while open: the bitswap protocol handlers are
        registered on entry and removed on exit. Raises :class:`ConfigError` if
        this service is already running."""
        if self._running:
            raise ConfigError(f"the bitswap service for {self.data_dir} is already running")
        self._running = True
        try:
            async with lifespan_nursery() as nursery:
                self.engine.set_nursery(nursery)
                await self.engine.start()
                try:
                    yield
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        try:
                            await self.engine.stop()
                        except Exception as exc:  # the host may already be closed
                            log.debug("stopping bitswap: %r", exc)
        finally:
            self._running = False


@asynccontextmanager
async def attach(
    host: Any,
    data_dir: str | os.PathLike[str],
    *,
    peers: Callable[[], Iterable[Any]] | None = None,
    limits: BitswapLimits | None = None,
) -> AsyncIterator[BitswapService]:
    """Run bitswap on *host* over the block store in ``<data_dir>/blocks`` (tests, benchmarks).

    *host* is fedstore's ``P2PHost`` or a py-libp2p host; *peers*, if given,
    returns the peer ids (strings or ``ID``) fetches may ask (default: every
    connected peer). A node does the same through the backend's lifespan.
    """
    service = BitswapService(host, data_dir, peers=peers, limits=limits)
    async with service.running():
        yield service

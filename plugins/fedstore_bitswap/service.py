"""The running bitswap service of one node, and how a node attaches it.

Bitswap needs a live libp2p host, so it exists only inside a running node::

    from fedstore.backends.registry import load_backend_class

    cls = load_backend_class("bitswap")          # no plugin imported by name
    async with cls.attach(p2p_host, data_dir, peers=node.peer_ids):
        chain = build_chain(names, settings)     # "bitswap" now constructs
        ...

:func:`attach` starts py-libp2p's bitswap protocol handlers on the host
(serving this node's block store at ``<data_dir>/blocks``), registers the
service under its data directory, and undoes both on exit.
``BitswapBackend.from_env`` finds the registered service (by
``CHECKPOINT_DIR``, or the only one running) and raises
:class:`~fedstore.errors.NotConfiguredError` outside a node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from fedstore.backends.base import Source
from fedstore.errors import ConfigError, NotConfiguredError
from fedstore.ipld.blocks import DagSummary
from fedstore.ipld.cid import DagParams, ParsedCid, parse_cid
from fedstore_bitswap.blockstore import BlockStore
from fedstore_bitswap.engine import FedstoreBitswapClient
from fedstore_bitswap.fetch import DagFetch, FetchStats
from fedstore_bitswap.limits import BitswapLimits

__all__ = ["BitswapService", "attach", "find_service", "running_services"]

log = logging.getLogger("fedstore.backends.bitswap")

_RUNNING: dict[str, BitswapService] = {}

NOT_IN_NODE = (
    "bitswap runs only inside a running fedstore node (it needs the node's libp2p host); "
    "use 'fedstore node', or another backend for one-off commands"
)


def _key(data_dir: str | os.PathLike[str]) -> str:
    return str(Path(data_dir).expanduser().resolve())


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
        async for chunk in fetch.run():
            yield chunk


@asynccontextmanager
async def attach(
    host: Any,
    data_dir: str | os.PathLike[str],
    *,
    peers: Callable[[], Iterable[Any]] | None = None,
    limits: BitswapLimits | None = None,
) -> AsyncIterator[BitswapService]:
    """Run bitswap on *host* for the node whose data directory is *data_dir*.

    *host* is fedstore's ``P2PHost`` or a py-libp2p host; *peers*, if given,
    returns the peer ids (strings or ``ID``) fetches may ask (default: every
    connected peer). Raises :class:`ConfigError` when a service already runs
    for that data directory in this process.
    """
    key = _key(data_dir)
    if key in _RUNNING:
        raise ConfigError(f"a bitswap service already runs for {key}")
    service = BitswapService(host, data_dir, peers=peers, limits=limits)
    async with trio.open_nursery() as nursery:
        service.engine.set_nursery(nursery)
        await service.engine.start()
        _RUNNING[key] = service
        try:
            yield service
        finally:
            _RUNNING.pop(key, None)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await service.engine.stop()
                except Exception as exc:  # the host may already be closed
                    log.debug("stopping bitswap: %r", exc)
            nursery.cancel_scope.cancel()


def running_services() -> list[BitswapService]:
    return list(_RUNNING.values())


def find_service(env: Mapping[str, str]) -> BitswapService:
    """The service a backend built from *env* should use.

    The one whose data directory is ``CHECKPOINT_DIR``, else the only one
    running; :class:`NotConfiguredError` when none runs (or several and
    ``CHECKPOINT_DIR`` names none of them).
    """
    if not _RUNNING:
        raise NotConfiguredError(NOT_IN_NODE, backend="bitswap")
    wanted = env.get("CHECKPOINT_DIR", "").strip()
    if wanted:
        service = _RUNNING.get(_key(wanted))
        if service is not None:
            return service
    if len(_RUNNING) == 1:
        return next(iter(_RUNNING.values()))
    raise NotConfiguredError(
        f"{len(_RUNNING)} fedstore nodes run bitswap in this process; "
        "set CHECKPOINT_DIR to the data directory of the one to use",
        backend="bitswap",
    )

"""An in-memory :class:`~fedstore.federation.transport.FederationPeer` for tests and development.

:class:`FakeNetwork` is a tiny pub/sub over trio memory channels plus a
shared content-addressed blob store standing in for the backend chain.
Checkpoints are encoded with :func:`fedstore.format.encode` and addressed by
:func:`fedstore.ipld.cid.cid_of_bytes`, exactly as over a real node, so CIDs
computed here are the real ones. A ``drop`` hook can lose chosen messages,
and peers can be created late (joining the network with no history).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import NotFoundError, SizeLimitError
from fedstore.federation.ledger import MemoryLedger
from fedstore.federation.signing import KeySigner
from fedstore.federation.transport import GlobalModel, RoundMetrics, SavedModel

__all__ = ["FakeNetwork", "FakePeer"]

log = logging.getLogger(__name__)

#: drop(sender, receiver, data) -> True to lose that delivery
DropRule = Callable[[str, str, bytes], bool]


class _Inbox:
    def __init__(self, receive: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        self._receive = receive

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        return self._receive.__aiter__()

    async def receive(self) -> tuple[str, bytes]:
        return await self._receive.receive()


@dataclass
class FakeNetwork:
    """Shared state of an in-process federation: subscribers, blobs, announced heads."""

    buffer: int = 256
    drop: DropRule | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)
    announced: list[tuple[int, str]] = field(default_factory=list)
    published: int = 0
    _subscribers: dict[str, list[trio.MemorySendChannel[tuple[str, bytes]]]] = field(
        default_factory=dict
    )

    #: per peer id: its signer (signing peers) and its ledger (survives a "restart")
    signers: dict[str, KeySigner] = field(default_factory=dict)
    ledgers: dict[str, MemoryLedger] = field(default_factory=dict)
    #: per peer id: what it keeps locally across restarts (round -> (cid, data))
    kept: dict[str, dict[int, tuple[str, bytes]]] = field(default_factory=dict)

    def peer(self, peer_id: str) -> FakePeer:
        return FakePeer(self, peer_id)

    def signing_peer(self, signer: KeySigner | None = None) -> FakePeer:
        """A peer with a real Ed25519 identity (federations with a manifest need one).

        Passing the signer of an earlier peer "restarts" it: same id, same
        ledger and kept checkpoints, a fresh inbox.
        """
        if signer is None:
            from libp2p.crypto.ed25519 import create_new_key_pair

            signer = KeySigner(create_new_key_pair())
        self.signers[signer.peer_id] = signer
        return FakePeer(self, signer.peer_id)

    def subscribed(self) -> set[str]:
        """Peers with an open inbox."""
        return {p for p, chans in self._subscribers.items() if chans}

    def deliver(self, sender: str, data: bytes) -> None:
        self.published += 1
        for receiver, chans in list(self._subscribers.items()):
            if self.drop is not None and self.drop(sender, receiver, data):
                continue
            for chan in chans:
                try:
                    chan.send_nowait((sender, data))
                except trio.WouldBlock:
                    log.warning("fake network: %s's inbox is full, message lost", receiver)
                except trio.BrokenResourceError:
                    pass

    def head(self) -> tuple[int, str] | None:
        return max(self.announced) if self.announced else None


@dataclass
class FakePeer:
    """One participant on a :class:`FakeNetwork`."""

    network: FakeNetwork
    _peer_id: str
    local: dict[str, bytes] = field(default_factory=dict)
    saved: list[SavedModel] = field(default_factory=list)
    #: what record_round was given, in order (a node keeps it in its catalog)
    recorded: list[RoundMetrics] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @asynccontextmanager
    async def messages(self) -> AsyncIterator[_Inbox]:
        send, receive = trio.open_memory_channel[tuple[str, bytes]](self.network.buffer)
        chans = self.network._subscribers.setdefault(self._peer_id, [])
        chans.append(send)
        try:
            async with receive:
                yield _Inbox(receive)
        finally:
            chans.remove(send)
            await send.aclose()

    async def publish(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.network.deliver(self._peer_id, data)

    async def save_global(
        self, round: int, arrays: Mapping[str, npt.NDArray[np.generic]], metadata: Mapping[str, str]
    ) -> SavedModel:
        from fedstore.format import encode
        from fedstore.ipld.cid import cid_of_bytes

        data = await trio.to_thread.run_sync(encode, arrays, metadata)
        cid = await trio.to_thread.run_sync(cid_of_bytes, data)
        self.local[cid] = data
        self.network.blobs[cid] = data
        self.network.announced.append((round, cid))
        self.network.kept.setdefault(self._peer_id, {})[round] = (cid, data)
        rec = SavedModel(round, cid, len(data))
        self.saved.append(rec)
        return rec

    async def load_global(self, round: int, cid: str) -> GlobalModel:
        from fedstore.format import decode

        data = self.local.get(cid)
        if data is None:
            data = await self.get_blob(cid, max_size=1 << 30)
            self.local[cid] = data
        ckpt = await trio.to_thread.run_sync(decode, data)
        return GlobalModel(round, cid, dict(ckpt.arrays), dict(ckpt.metadata))

    async def head(self) -> tuple[int, str] | None:
        await trio.lowlevel.checkpoint()
        head = self.network.head()
        if head is not None and head[1] not in self.local:
            self.local[head[1]] = await self.get_blob(head[1], max_size=1 << 30)
        return head

    async def put_blob(self, data: bytes) -> str:
        from fedstore.ipld.cid import cid_of_bytes

        cid = await trio.to_thread.run_sync(cid_of_bytes, data, 1)
        self.network.blobs[cid] = bytes(data)
        return cid

    async def get_blob(self, cid: str, *, max_size: int) -> bytes:
        from fedstore.ipld.cid import verify_bytes

        await trio.lowlevel.checkpoint()
        try:
            data = self.network.blobs[cid]
        except KeyError:
            raise NotFoundError(f"no object {cid} on the fake network", backend="fake") from None
        if len(data) > max_size:
            raise SizeLimitError(f"object {cid} is {len(data)} bytes, limit {max_size}")
        await trio.to_thread.run_sync(verify_bytes, cid, data)
        return data

    async def record_round(self, metrics: RoundMetrics) -> None:
        await trio.lowlevel.checkpoint()
        self.recorded.append(metrics)

    async def local_head(self) -> tuple[int, str] | None:
        await trio.lowlevel.checkpoint()
        kept = self.network.kept.get(self._peer_id, {})
        return max((r, c) for r, (c, _) in kept.items()) if kept else None

    async def fetch_global(self, cid: str) -> bytes:
        data = self.local.get(cid)
        if data is not None:
            await trio.lowlevel.checkpoint()
            return data
        return await self.get_blob(cid, max_size=1 << 30)

    async def keep_global(self, round: int, cid: str, data: bytes) -> None:
        from fedstore.ipld.cid import verify_bytes

        await trio.to_thread.run_sync(verify_bytes, cid, data)
        self.local[cid] = data
        self.network.blobs.setdefault(cid, data)
        self.network.kept.setdefault(self._peer_id, {})[round] = (cid, data)

    def present(self) -> set[str]:
        return self.network.subscribed() - {self._peer_id}

    @property
    def signer(self) -> KeySigner:
        signer = self.network.signers.get(self._peer_id)
        if signer is None:
            raise ValueError(f"fake peer {self._peer_id} has no key: use network.signing_peer()")
        return signer

    @property
    def ledger(self) -> MemoryLedger:
        return self.network.ledgers.setdefault(self._peer_id, MemoryLedger())

    def drop_counts(self) -> Mapping[str, int]:
        return {}

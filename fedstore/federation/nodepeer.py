"""The real :class:`~fedstore.federation.transport.FederationPeer`: a running fedstore node.

Maps the federation's needs onto :class:`fedstore.node.Node`:

* training traffic is ``node.publish``/``node.subscribe`` on ``fed-learn``;
* global checkpoints are ``node.save_checkpoint`` (local store and catalog,
  backend chain with pin records, ``CID:<round>:<cid>`` announcement);
* ``load_global`` reads the local store when it holds that CID for that
  round, otherwise fetches through the backend chain (verified against the
  CID), saves the bytes locally (so every trainer's catalog records the
  rounds it used) and decodes the fetched bytes, not a re-read of the file;
* ``head`` is ``node.sync()`` (ask connected peers for their head, fetch it
  by CID if newer than ours);
* large updates and strategy state are stored with ``chain.add`` (CIDv1)
  and fetched with ``chain.fetch_bytes`` (verified, size-capped);
* a closed round's metrics go to the node's catalog
  (``round_metrics``, see docs/CATALOG.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import CheckpointNotFoundError, SizeLimitError
from fedstore.federation.transport import GlobalModel, RoundMetrics, SavedModel
from fedstore.p2p.messages import TRAINING_TOPIC

if TYPE_CHECKING:
    from fedstore.format import Checkpoint
    from fedstore.node import Node

__all__ = ["NodePeer"]


class _SubscriptionInbox:
    def __init__(self, sub: Any) -> None:
        self._sub = sub

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[tuple[str, bytes]]:
        async for sender, data in self._sub:
            yield sender, data

    async def receive(self) -> tuple[str, bytes]:
        try:
            sender, data = await self._sub.__anext__()
        except StopAsyncIteration:
            raise trio.EndOfChannel from None
        return sender, data


def _decode(data: bytes) -> Checkpoint:
    from fedstore.format import decode

    return decode(data)


class NodePeer:
    """Adapter from a running :class:`~fedstore.node.Node` to the federation's peer protocol."""

    def __init__(self, node: Node, *, topic: str = TRAINING_TOPIC) -> None:
        self.node = node
        self.topic = topic

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def inline_limit(self) -> int:
        """Largest message the node sends inline (bigger ones it would send by CID itself)."""
        return int(self.node.config.inline_limit)

    @asynccontextmanager
    async def messages(self) -> AsyncIterator[_SubscriptionInbox]:
        async with self.node.subscribe(self.topic) as sub:
            yield _SubscriptionInbox(sub)

    async def publish(self, data: bytes) -> None:
        await self.node.publish(self.topic, data)

    async def save_global(
        self, round: int, arrays: Mapping[str, npt.NDArray[np.generic]], metadata: Mapping[str, str]
    ) -> SavedModel:
        rec = await self.node.save_checkpoint(round, dict(arrays), dict(metadata))
        return SavedModel(rec.round, rec.cid, int(rec.stored_size))

    async def load_global(self, round: int, cid: str) -> GlobalModel:
        store = self.node.store
        try:
            rec = await store.get(round)
        except CheckpointNotFoundError:
            rec = None
        if rec is None or rec.cid != cid or rec.status != "ok":
            data = await self.node.fetch(cid)  # verified against the CID
            await store.save_encoded(round, data, cid, replace=True)
            # decode the bytes in hand: reading the file back would hash and hold them again
            ckpt = await trio.to_thread.run_sync(_decode, data)
            del data
        else:
            ckpt = await store.load(round)
        return GlobalModel(round, cid, dict(ckpt.arrays), dict(ckpt.metadata))

    async def head(self) -> tuple[int, str] | None:
        head = await self.node.sync()
        return None if head is None else (head.round, head.cid)

    async def put_blob(self, data: bytes) -> str:
        added = await self.node.chain.add(
            data, cid_version=1, name="fed-update", labels={"peer": self.peer_id}
        )
        return str(added.cid)

    async def get_blob(self, cid: str, *, max_size: int) -> bytes:
        if max_size > self.node.config.max_fetch_size:
            raise SizeLimitError(
                f"update of {max_size} bytes exceeds FEDSTORE_MAX_FETCH_SIZE="
                f"{self.node.config.max_fetch_size}"
            )
        return bytes(await self.node.chain.fetch_bytes(cid, max_size=max_size))

    async def record_round(self, metrics: RoundMetrics) -> None:
        await self.node.catalog.record_round_metrics(
            metrics.round,
            metrics.cid,
            participants=len(metrics.participants),
            num_samples=metrics.num_samples,
            metrics=metrics.metrics,
        )

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
  (``round_metrics``, see docs/CATALOG.md);
* federations with a manifest: ``fetch_global`` is a verified fetch through
  the chain that stores nothing, ``keep_global`` saves a verified model
  locally (and gives backends that serve peers, bitswap, their copy); the
  signer is the node's identity key; the ledger is the catalog's
  ``manifests`` and ``federation_rounds`` tables.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import CheckpointNotFoundError, ManifestError, SizeLimitError
from fedstore.federation.ledger import LedgerEntry
from fedstore.federation.signing import KeySigner
from fedstore.federation.transport import GlobalModel, RoundMetrics, SavedModel
from fedstore.p2p.messages import TRAINING_TOPIC

if TYPE_CHECKING:
    from fedstore.catalog.aio import AsyncCatalog
    from fedstore.federation.membership import Membership
    from fedstore.format import Checkpoint
    from fedstore.node import Node

__all__ = ["CatalogLedger", "NodePeer", "join_federation"]

log = logging.getLogger(__name__)


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
        from libp2p.crypto.keys import KeyPair

        self.node = node
        self.topic = topic
        lh = node.host.libp2p_host
        self._signer = KeySigner(KeyPair(lh.get_private_key(), lh.get_public_key()))
        self._ledger = CatalogLedger(node.catalog)

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

    async def local_head(self) -> tuple[int, str] | None:
        head = await self.node.head()
        return None if head is None else (head.round, head.cid)

    async def fetch_global(self, cid: str) -> bytes:
        return bytes(await self.node.fetch(cid))

    async def keep_global(self, round: int, cid: str, data: bytes) -> None:
        await self.node.keep_checkpoint(round, data, cid)

    def present(self) -> set[str]:
        return set(self.node.peers())

    @property
    def signer(self) -> KeySigner:
        return self._signer

    @property
    def ledger(self) -> CatalogLedger:
        return self._ledger

    def drop_counts(self) -> Mapping[str, int]:
        return self.node.counters.snapshot()

    async def record_round(self, metrics: RoundMetrics) -> None:
        await self.node.catalog.record_round_metrics(
            metrics.round,
            metrics.cid,
            participants=len(metrics.participants),
            num_samples=metrics.num_samples,
            metrics=metrics.metrics,
        )


async def record_manifest(catalog: AsyncCatalog, cid: str, data: bytes) -> None:
    """Check a signed manifest's bytes (:class:`ManifestError` if they are not the
    manifest ``cid`` or the signature fails) and keep it in the catalog."""
    from fedstore.federation.manifest import parse_signed

    signed = parse_signed(data)
    if signed.cid != cid:
        raise ManifestError(f"manifest bytes are {signed.cid}, not {cid}")
    m = signed.manifest
    await catalog.record_manifest(
        cid,
        name=m.name,
        owner=m.owner,
        previous=m.previous,
        members=len(m.members),
        document=signed.data.decode("ascii"),
    )


class CatalogLedger:
    """The federation :class:`~fedstore.federation.ledger.Ledger` in a node's catalog."""

    def __init__(self, catalog: AsyncCatalog) -> None:
        self.catalog = catalog

    async def record_manifest(self, cid: str, data: bytes) -> None:
        await record_manifest(self.catalog, cid, data)

    async def record(self, entry: LedgerEntry) -> None:
        await self.catalog.record_federation_round(entry)

    async def last_adopted(self, manifest: str) -> LedgerEntry | None:
        return await self.catalog.last_adopted_round(manifest)


async def join_federation(
    node: Node, source: str | Membership | None = None, *, fetch_timeout: float = 30.0
) -> Membership:
    """Make ``node`` a member of the federation ``source`` names (default: its config's).

    ``source`` is a manifest file, a manifest CID (looked up in the node's
    catalog, then fetched through its backend chain - from peers over
    bitswap - for up to ``fetch_timeout`` seconds), or a Membership. The
    manifest's members become the node's peer filter, the manifest is kept in
    the catalog and stored through the chain (so peers can fetch it by CID).
    ManifestError if it cannot be had, or this node is not a member.
    """
    from fedstore.errors import FedstoreError
    from fedstore.federation.manifest import MANIFEST_CID_VERSION
    from fedstore.federation.membership import Membership, load_membership, manifest_source

    if isinstance(source, Membership):
        membership = source
    else:
        text = source or node.config.federation
        if not text:
            raise ManifestError("no federation manifest given (--federation FILE|CID)")
        kind, value = manifest_source(text)
        known = await node.catalog.get_manifest(value) if kind == "cid" else None

        async def fetch(cid: str, max_size: int) -> bytes:
            if known is not None:
                return known.document.encode("ascii")
            with trio.fail_after(fetch_timeout):
                return bytes(await node.chain.fetch_bytes(cid, max_size=max_size))

        try:
            membership = await load_membership(text, fetch)
        except trio.TooSlowError:
            raise ManifestError(
                f"manifest {value} not found within {fetch_timeout:g}s: give the manifest file "
                "or connect to a peer that holds it"
            ) from None
    if not membership.allows(node.peer_id):
        raise ManifestError(
            f"this node ({node.peer_id}) is not a member of federation "
            f"{membership.manifest.name!r} ({membership.cid}); ask its owner to add it"
        )
    node.set_peer_filter(membership.allows)
    await record_manifest(node.catalog, membership.cid, membership.signed.data)
    try:
        await node.chain.add(
            membership.signed.data, cid_version=MANIFEST_CID_VERSION, name="fedstore-manifest"
        )
    except FedstoreError as exc:  # peers can still be given the file
        log.warning("manifest %s not stored for peers to fetch: %s", membership.cid, exc)
    log.info("member of federation %r (%s)", membership.manifest.name, membership.cid)
    return membership

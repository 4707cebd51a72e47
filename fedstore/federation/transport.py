"""What the federation roles need from the network and storage: :class:`FederationPeer`.

The trainer and aggregator loops (:mod:`fedstore.federation.trainer`,
:mod:`fedstore.federation.aggregator`) are written against this small
protocol, not against the node directly, so the round protocol can be
exercised in one process over an in-memory fake
(:mod:`fedstore.federation.fake`) and run for real over a fedstore node
(:class:`fedstore.federation.nodepeer.NodePeer`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from fedstore.federation.ledger import Ledger
    from fedstore.federation.signing import Signer

__all__ = ["METRIC_SOURCES", "FederationPeer", "GlobalModel", "Inbox", "RoundMetrics", "SavedModel"]

Arrays = dict[str, npt.NDArray[np.generic]]

#: where a round's metrics come from: the trainers' reports combined by the
#: strategy, the aggregator's ``evaluate`` function, the strategy itself
METRIC_SOURCES = ("trainers", "evaluate", "strategy")


@dataclass(frozen=True, slots=True)
class SavedModel:
    """A global checkpoint as stored: round, CID and encoded size in bytes."""

    round: int
    cid: str
    size: int


@dataclass(frozen=True, slots=True)
class GlobalModel:
    """A global checkpoint as loaded: its arrays and metadata."""

    round: int
    cid: str
    arrays: Arrays
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RoundMetrics:
    """What a closed round is recorded with: its model, participants and metrics by source."""

    round: int
    cid: str
    participants: tuple[str, ...]
    num_samples: int
    #: source (one of :data:`METRIC_SOURCES`) -> metric name -> finite value
    metrics: Mapping[str, Mapping[str, float]]


class Inbox(Protocol):
    """Messages of the training topic as ``(signing peer id, data)``."""

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]: ...

    async def receive(self) -> tuple[str, bytes]:
        """Next message; raises ``trio.EndOfChannel`` when the subscription ends."""
        ...


class FederationPeer(Protocol):
    """One participant's view of the network and its storage.

    Contracts:

    * ``messages()`` subscribes to the training topic on entry (messages
      published after entry are delivered, including the peer's own) and
      unsubscribes on exit.
    * ``save_global`` stores a global checkpoint (local store, catalog,
      backend chain) and announces it; the CID is that of the encoded bytes.
    * ``load_global`` returns the arrays and metadata of the checkpoint with
      that CID, from the local store or fetched and verified through the
      backend chain, and keeps it locally; raises a FedstoreError if it cannot.
    * ``head`` returns the newest ``(round, cid)`` the peer knows of or can
      learn from the network (syncing it locally), or None.
    * ``put_blob``/``get_blob`` store and fetch opaque bytes by CID through
      the backend chain (updates too large for a pubsub message, strategy
      state); ``put_blob`` returns the data's CIDv1; ``get_blob`` verifies
      the bytes and refuses more than ``max_size``.
    * ``record_round`` keeps a closed round's metrics where the peer's
      rounds are recorded (a node's catalog, table ``round_metrics``).
    * ``local_head`` is the newest ``(round, cid)`` held locally, without
      asking the network (what an aggregator resumes from).

    Federations with a manifest also use:

    * ``fetch_global`` returns a checkpoint's bytes by CID (verified), without
      storing them: a model is kept only once it has been verified, with
      ``keep_global``, which stores it locally as this member's copy of that
      round (serving it to peers like any local checkpoint);
    * ``present`` is the set of peers currently connected;
    * ``signer`` signs as this peer (its identity key), ``ledger`` is where
      its runs are remembered (a node's catalog), ``drop_counts`` what its
      network layer dropped, by ``topic:reason``.
    """

    @property
    def peer_id(self) -> str: ...

    def messages(self) -> AbstractAsyncContextManager[Inbox]: ...

    async def publish(self, data: bytes) -> None: ...

    async def save_global(
        self, round: int, arrays: Mapping[str, npt.NDArray[np.generic]], metadata: Mapping[str, str]
    ) -> SavedModel: ...

    async def load_global(self, round: int, cid: str) -> GlobalModel: ...

    async def head(self) -> tuple[int, str] | None: ...

    async def put_blob(self, data: bytes) -> str: ...

    async def get_blob(self, cid: str, *, max_size: int) -> bytes: ...

    async def record_round(self, metrics: RoundMetrics) -> None: ...

    async def local_head(self) -> tuple[int, str] | None: ...

    async def fetch_global(self, cid: str) -> bytes: ...

    async def keep_global(self, round: int, cid: str, data: bytes) -> None: ...

    def present(self) -> set[str]: ...

    @property
    def signer(self) -> Signer: ...

    @property
    def ledger(self) -> Ledger: ...

    def drop_counts(self) -> Mapping[str, int]: ...

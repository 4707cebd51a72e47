"""Plain, immutable records the catalog hands out (never ORM objects).

They are safe to pass between threads, to keep after the catalog is closed
and to compare in tests. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "AnnouncementRecord",
    "CheckpointRecord",
    "FailedClaimRecord",
    "FederationRoundRecord",
    "LatestAnnounced",
    "ManifestRecord",
    "NodeRunRecord",
    "PeerRecord",
    "PinRecord",
    "QueryResult",
    "RoundHistoryRow",
    "RoundMetricRecord",
]


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """One local checkpoint: a row of ``checkpoints``.

    ``path`` is relative to the store's data directory (so the directory can
    be moved). ``status`` is ``ok``, ``missing`` or ``corrupt``.
    """

    round: int
    cid: str
    cid_version: int
    codec: str
    raw_size: int
    stored_size: int
    created_at: datetime
    created_by: str | None
    path: str
    status: str = "ok"


@dataclass(frozen=True, slots=True)
class AnnouncementRecord:
    """A CID announcement heard from a peer (first and last time heard)."""

    round: int
    cid: str
    sender_peer: str
    topic: str
    received_at: datetime
    last_received_at: datetime
    times_heard: int


@dataclass(frozen=True, slots=True)
class FailedClaimRecord:
    """A claim of (round, CID) by *peer* that sync could not fetch, *attempts* times."""

    round: int
    cid: str
    peer: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class LatestAnnounced:
    """The highest round announced on the network, its CID and who said so first."""

    round: int
    cid: str
    sender_peer: str


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer the node knows, with its multiaddrs."""

    peer_id: str
    addrs: tuple[str, ...]
    first_seen: datetime
    last_seen: datetime
    role: str | None


@dataclass(frozen=True, slots=True)
class PinRecord:
    """The state of one CID on one storage backend."""

    cid: str
    backend: str
    state: str
    backend_ref: str | None
    last_error: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RoundHistoryRow:
    """One row of the ``round_history`` view (see docs/CATALOG.md)."""

    round: int
    cid: str
    stored_locally: bool
    local_status: str | None
    stored_size: int | None
    announced_by: int
    first_heard: datetime | None
    pinned_on: int
    pin_states: str | None


@dataclass(frozen=True, slots=True)
class RoundMetricRecord:
    """One metric of a federated round: a row of ``round_metrics`` (see docs/CATALOG.md).

    ``source`` is ``trainers`` (the trainers' reports combined, by default
    a mean weighted by samples), ``evaluate`` (the aggregator's evaluation of
    the global model) or ``strategy`` (the strategy's own figures).
    """

    round: int
    cid: str
    participants: int
    num_samples: int
    source: str
    name: str
    value: float
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """A federation manifest this node ran with: a row of ``manifests``."""

    cid: str
    name: str
    owner: str
    previous: str | None
    members: int
    #: the signed manifest's bytes (canonical JSON), as stored under ``cid``
    document: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class FederationRoundRecord:
    """A global model of a federation run as this node judged it: a row of ``federation_rounds``.

    ``status`` is ``adopted`` (built on) or ``refused``; ``how`` says how it
    was checked (``full``: recomputed from its signed updates, ``binding``:
    verification off, ``own``: computed here, ``trusted``: read back from
    this node's own store); ``expected`` is, for a refused model, the CID
    recomputing the round gave.
    """

    manifest: str
    session: str
    round: int
    cid: str
    status: str
    aggregator: str | None = None
    how: str = "full"
    expected: str | None = None
    participants: int = 0
    detail: str = ""
    rejections: Mapping[str, int] = field(default_factory=dict)
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NodeRunRecord:
    """One run of a node on this data directory: a row of ``node_runs`` (see docs/CATALOG.md).

    ``backends`` is the chain the node ran with, in order (what ``fedstore
    pins retry`` retries without ``--backends``); ``addrs`` what it advertised;
    ``stopped_at`` is None while it runs, or when it was killed.
    """

    id: int
    peer_id: str
    role: str
    backends: tuple[str, ...]
    addrs: tuple[str, ...]
    version: str
    started_at: datetime
    stopped_at: datetime | None


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names and rows of a read-only SQL query.

    Unpacks as ``columns, rows = result``.
    """

    columns: tuple[str, ...]
    rows: list[tuple[object, ...]]
    #: True when ``max_rows`` cut the result short.
    truncated: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.columns, self.rows))

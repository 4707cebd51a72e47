"""SQLAlchemy 2 models of the fedstore catalog.

These classes describe the schema at the *head* migration; the migrations in
``migrations/versions`` (package ``fedstore.catalog.migrations``) are what actually
create it. ``tests/test_migrations.py`` fails when the two drift apart.

Every constraint and index has an explicit name through :data:`NAMING_CONVENTION`
so Alembic batch migrations on SQLite (which recreate tables) can find them
again. Timestamps are stored as naive UTC text by SQLite and always handed
back as timezone-aware UTC :class:`~datetime.datetime` objects.

The ORM classes stay inside :mod:`fedstore.catalog`; callers get the plain
dataclasses of :mod:`fedstore.catalog.records` (``row.to_record()``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from fedstore.catalog.records import (
    AnnouncementRecord,
    CheckpointRecord,
    FailedClaimRecord,
    FederationRoundRecord,
    ManifestRecord,
    NodeRunRecord,
    PeerRecord,
    PinRecord,
    RoundMetricRecord,
)

__all__ = [
    "CHECKPOINT_STATUSES",
    "METRIC_SOURCES",
    "NAMING_CONVENTION",
    "PIN_STATES",
    "Announcement",
    "Base",
    "Checkpoint",
    "FailedClaim",
    "FederationRound",
    "Manifest",
    "NodeRun",
    "Peer",
    "Pin",
    "RoundMetric",
    "UTCDateTime",
    "utcnow",
]

#: Names for every constraint and index (see Alembic #1834 on why this matters).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: ``checkpoints.status``: ``ok`` (file present, last check matched the CID),
#: ``missing`` (file gone), ``corrupt`` (bytes do not hash to the CID).
CHECKPOINT_STATUSES = ("ok", "missing", "corrupt")
#: ``pins.state``.
PIN_STATES = ("pending", "pinned", "failed")
#: ``federation_rounds.status``: a global model built on, or refused.
FEDERATION_ROUND_STATUSES = ("adopted", "refused")
#: ``round_metrics.source``: combined trainer reports, the aggregator's
#: evaluation, the strategy's own figures.
METRIC_SOURCES = ("trainers", "evaluate", "strategy")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that only accepts aware datetimes and returns aware UTC ones."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("catalog timestamps must be timezone-aware (use datetime.now(UTC))")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Checkpoint(Base):
    """A checkpoint file this node holds, one per round."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        # The unique index on round also serves "latest round" (ORDER BY round DESC LIMIT 1).
        UniqueConstraint("round"),
        CheckConstraint("round >= 0", name="round_nonnegative"),
        CheckConstraint("status IN ('ok', 'missing', 'corrupt')", name="status_valid"),
        Index(None, "cid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    cid: Mapped[str] = mapped_column(String(128), nullable=False)
    cid_version: Mapped[int] = mapped_column(Integer, nullable=False)
    codec: Mapped[str] = mapped_column(String(64), nullable=False)
    raw_size: Mapped[int] = mapped_column(Integer, nullable=False)
    stored_size: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default="ok", server_default=text("'ok'")
    )

    def to_record(self) -> CheckpointRecord:
        return CheckpointRecord(
            round=self.round,
            cid=self.cid,
            cid_version=self.cid_version,
            codec=self.codec,
            raw_size=self.raw_size,
            stored_size=self.stored_size,
            created_at=self.created_at,
            created_by=self.created_by,
            path=self.path,
            status=self.status,
        )


class Peer(Base):
    """A libp2p peer this node has heard of."""

    __tablename__ = "peers"

    peer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: JSON list of multiaddr strings.
    addrs: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)

    def to_record(self) -> PeerRecord:
        try:
            addrs = tuple(str(a) for a in json.loads(self.addrs))
        except (ValueError, TypeError):
            addrs = ()
        return PeerRecord(
            peer_id=self.peer_id,
            addrs=addrs,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            role=self.role,
        )


class Announcement(Base):
    """A ``CID:<round>:<cid>`` announcement heard on a gossipsub topic.

    One row per (round, CID, sender, topic); repeats bump ``times_heard`` and
    ``last_received_at`` and keep ``received_at`` as the first time heard.
    """

    __tablename__ = "announcements"
    __table_args__ = (
        UniqueConstraint("round", "cid", "sender_peer", "topic"),
        CheckConstraint("round >= 0", name="round_nonnegative"),
        Index(None, "cid"),
        Index(None, "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    cid: Mapped[str] = mapped_column(String(128), nullable=False)
    sender_peer: Mapped[str] = mapped_column(
        String(128), ForeignKey("peers.peer_id", ondelete="CASCADE"), nullable=False
    )
    topic: Mapped[str] = mapped_column(String(256), nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow
    )
    times_heard: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    def to_record(self) -> AnnouncementRecord:
        return AnnouncementRecord(
            round=self.round,
            cid=self.cid,
            sender_peer=self.sender_peer,
            topic=self.topic,
            received_at=self.received_at,
            last_received_at=self.last_received_at,
            times_heard=self.times_heard,
        )


class Pin(Base):
    """Where a CID is (to be) kept: one row per (CID, backend)."""

    __tablename__ = "pins"
    __table_args__ = (
        UniqueConstraint("cid", "backend"),
        CheckConstraint("state IN ('pending', 'pinned', 'failed')", name="state_valid"),
        Index(None, "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cid: Mapped[str] = mapped_column(String(128), nullable=False)
    backend: Mapped[str] = mapped_column(String(64), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    #: The backend's own handle for the object (Pinata file id, ...).
    backend_ref: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)

    def to_record(self) -> PinRecord:
        return PinRecord(
            cid=self.cid,
            backend=self.backend,
            state=self.state,
            backend_ref=self.backend_ref,
            last_error=self.last_error,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class RoundMetric(Base):
    """One metric of one federated round's global model, by where it came from.

    One row per (round, CID, source, name); recording it again replaces the
    value. ``participants``/``num_samples`` describe the round's aggregate
    and repeat on each of its rows.
    """

    __tablename__ = "round_metrics"
    __table_args__ = (
        UniqueConstraint("round", "cid", "source", "name"),
        CheckConstraint("round >= 0", name="round_nonnegative"),
        CheckConstraint("source IN ('trainers', 'evaluate', 'strategy')", name="source_valid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    cid: Mapped[str] = mapped_column(String(128), nullable=False)
    participants: Mapped[int] = mapped_column(Integer, nullable=False)
    num_samples: Mapped[int] = mapped_column(Integer, nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)

    def to_record(self) -> RoundMetricRecord:
        return RoundMetricRecord(
            round=self.round,
            cid=self.cid,
            participants=self.participants,
            num_samples=self.num_samples,
            source=self.source,
            name=self.name,
            value=self.value,
            recorded_at=self.recorded_at,
        )


class Manifest(Base):
    """A signed federation manifest this node ran with (one row per manifest CID)."""

    __tablename__ = "manifests"
    __table_args__ = (UniqueConstraint("cid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cid: Mapped[str] = mapped_column(String(128), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    previous: Mapped[str | None] = mapped_column(String(128), nullable=True)
    members: Mapped[int] = mapped_column(Integer, nullable=False)
    document: Mapped[str] = mapped_column(Text, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)

    def to_record(self) -> ManifestRecord:
        return ManifestRecord(
            cid=self.cid,
            name=self.name,
            owner=self.owner,
            previous=self.previous,
            members=self.members,
            document=self.document,
            recorded_at=self.recorded_at,
        )


class FederationRound(Base):
    """A global model of a federation run (manifest + session), adopted or refused here.

    One row per (manifest, session, round, CID); recording it again replaces it.
    """

    __tablename__ = "federation_rounds"
    __table_args__ = (
        UniqueConstraint("manifest_cid", "session", "round", "cid"),
        CheckConstraint("round >= 0", name="round_nonnegative"),
        CheckConstraint("status IN ('adopted', 'refused')", name="status_valid"),
        Index(None, "manifest_cid", "status", "round"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    manifest_cid: Mapped[str] = mapped_column(String(128), nullable=False)
    session: Mapped[str] = mapped_column(String(64), nullable=False)
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    cid: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    aggregator: Mapped[str | None] = mapped_column(String(128), nullable=True)
    how: Mapped[str] = mapped_column(String(16), nullable=False)
    expected_cid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    participants: Mapped[int] = mapped_column(Integer, nullable=False)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: JSON object: updates and messages dropped in the round, by reason
    rejections: Mapped[str | None] = mapped_column(Text, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)

    def to_record(self) -> FederationRoundRecord:
        try:
            raw = json.loads(self.rejections) if self.rejections else {}
            rejections = {str(k): int(v) for k, v in raw.items()}
        except (ValueError, TypeError, AttributeError):
            rejections = {}
        return FederationRoundRecord(
            manifest=self.manifest_cid,
            session=self.session,
            round=self.round,
            cid=self.cid,
            status=self.status,
            aggregator=self.aggregator,
            how=self.how,
            expected=self.expected_cid,
            participants=self.participants,
            detail=self.detail or "",
            rejections=rejections,
            recorded_at=self.recorded_at,
        )


class FailedClaim(Base):
    """A claim (round, CID) by *peer* that sync could not fetch from anyone.

    One row per (round, CID, claiming peer); each further failed attempt bumps
    ``attempts`` and ``last_failed_at``. Sync demotes and backs off from
    these candidates and from peers with failed claims, across restarts
    (:mod:`fedstore.p2p.sync`); rows older than the retention are pruned.
    """

    __tablename__ = "failed_claims"
    __table_args__ = (
        UniqueConstraint("round", "cid", "peer"),
        CheckConstraint("round >= 0", name="round_nonnegative"),
        CheckConstraint("attempts >= 1", name="attempts_positive"),
        Index(None, "peer"),
        Index(None, "last_failed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    cid: Mapped[str] = mapped_column(String(128), nullable=False)
    peer: Mapped[str] = mapped_column(String(128), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    def to_record(self) -> FailedClaimRecord:
        return FailedClaimRecord(
            round=self.round,
            cid=self.cid,
            peer=self.peer,
            attempts=self.attempts,
            first_failed_at=self.first_failed_at,
            last_failed_at=self.last_failed_at,
            last_error=self.last_error,
        )


class NodeRun(Base):
    """One run of a node on this data directory: what it ran with, when it started and stopped."""

    __tablename__ = "node_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    peer_id: Mapped[str] = mapped_column(String(128), nullable=False)
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    #: the backend chain, comma-separated, in order
    backends: Mapped[str] = mapped_column(Text, nullable=False)
    #: JSON list of the advertised multiaddrs
    addrs: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    version: Mapped[str] = mapped_column(String(32), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def to_record(self) -> NodeRunRecord:
        try:
            addrs = tuple(str(a) for a in json.loads(self.addrs))
        except (ValueError, TypeError):
            addrs = ()
        return NodeRunRecord(
            id=self.id,
            peer_id=self.peer_id,
            role=self.role,
            backends=tuple(b for b in self.backends.split(",") if b),
            addrs=addrs,
            version=self.version,
            started_at=self.started_at,
            stopped_at=self.stopped_at,
        )

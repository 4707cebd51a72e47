"""The catalog: one SQLite file per node recording checkpoints, announcements, peers, pins.

:class:`Catalog` is synchronous (SQLAlchemy's sync engine) and thread-safe:
every method opens its own short session. Code running on the trio loop
uses :class:`fedstore.catalog.aio.AsyncCatalog`, which runs each call in a
worker thread. Everything returned is a plain frozen dataclass from
:mod:`fedstore.catalog.records`; ORM objects never leave this module.

Errors: SQLAlchemy/sqlite3 failures become :class:`~fedstore.errors.CatalogError`
(lock timeouts say so); a second, different checkpoint for a round raises
:class:`RoundConflictError`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from fedstore.catalog import migrate
from fedstore.catalog.claims import (
    _TOUCH_PEER,
    _UPSERT_ANNOUNCEMENT,
    ClaimsMixin,
    HeardAnnouncement,
    _parse,
    _ts,
)
from fedstore.catalog.engine import WRITE_OPTION, is_writable, make_engine, translate_errors
from fedstore.catalog.models import (
    CHECKPOINT_STATUSES,
    FEDERATION_ROUND_STATUSES,
    METRIC_SOURCES,
    PIN_STATES,
    Announcement,
    Checkpoint,
    FederationRound,
    Manifest,
    NodeRun,
    Peer,
    Pin,
    RoundMetric,
    utcnow,
)
from fedstore.catalog.readonly import read_only_query
from fedstore.catalog.records import (
    AnnouncementRecord,
    CheckpointRecord,
    FederationRoundRecord,
    LatestAnnounced,
    ManifestRecord,
    NodeRunRecord,
    PeerRecord,
    PinRecord,
    QueryResult,
    RoundHistoryRow,
    RoundMetricRecord,
)
from fedstore.errors import CatalogError, RoundConflictError

__all__ = [
    "CATALOG_FILENAME",
    "Catalog",
    "HeardAnnouncement",
    "RoundConflictError",
    "resolve_db_path",
]

log = logging.getLogger(__name__)

#: File name of the catalog inside a node's data directory.
CATALOG_FILENAME = "catalog.sqlite"


def resolve_db_path(location: str | Path) -> Path:
    """``<dir>/catalog.sqlite`` for a directory; a ``*.sqlite``/``*.db`` file path as is."""
    p = Path(location).expanduser()
    if p.suffix in {".sqlite", ".sqlite3", ".db"} and not p.is_dir():
        return p
    return p / CATALOG_FILENAME


def _parse_ts(value: object) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


# Hand-written twins of the ORM queries, run by Catalog._read_one. The unique
# index on round is walked backwards and stops at the first ok row.
_CHECKPOINT_COLUMNS = (
    "round, cid, cid_version, codec, raw_size, stored_size, created_at, created_by, path, status"
)
_LATEST_CHECKPOINT_SQL = (
    f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE status = 'ok' ORDER BY round DESC LIMIT 1"
)
_LATEST_ROUND_SQL = "SELECT round FROM checkpoints WHERE status = 'ok' ORDER BY round DESC LIMIT 1"


class Catalog(ClaimsMixin):
    """The node's SQLite catalog. Create it with :meth:`open`; close it with :meth:`close`.

    Usable as a context manager. All methods are safe to call from several
    threads; writes are serialised by SQLite (``BEGIN IMMEDIATE`` with a
    busy timeout), readers never wait for the writer (WAL).
    """

    def __init__(
        self,
        db_path: Path,
        engine: Engine,
        opened: migrate.UpgradeResult,
        *,
        read_only: bool = False,
    ) -> None:
        """Internal; use :meth:`Catalog.open`."""
        self._path = db_path
        self._read_only = read_only
        self._engine = engine
        self._read: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        self._write: sessionmaker[Session] = sessionmaker(
            engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        #: What opening did to the schema (created, unchanged, or upgraded with a backup).
        self.opened = opened
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        location: str | Path,
        *,
        auto_upgrade: bool | None = None,
        read_only: bool | None = False,
    ) -> Catalog:
        """Open (creating if needed) the catalog in directory ``location`` or at that file.

        A new catalog gets the head schema; an older one is backed up and
        upgraded under an exclusive file lock (safe when several processes
        open it at once) unless auto-upgrade is off, in which case
        :class:`CatalogError` names the ``fedstore db upgrade`` command. A
        catalog from a newer fedstore, a foreign SQLite file and a
        zero-length file (a truncated catalog: ``fedstore db rebuild``) are
        refused, and so is a catalog in a directory that cannot be written,
        with a message saying so.

        ``read_only=True`` opens an existing, up-to-date catalog without
        changing anything (every write raises :class:`CatalogError`);
        ``read_only=None`` does so only when the directory cannot be written
        (commands that only read use it, so they work on a read-only data
        directory). :attr:`read_only` tells which it became.
        """
        db_path = resolve_db_path(location)
        if read_only is None:
            read_only = db_path.is_file() and not is_writable(db_path)
        opened = migrate.ensure_schema(db_path, auto_upgrade=auto_upgrade, read_only=read_only)
        if opened.changed:
            how = "created" if opened.from_revision is None else "upgraded"
            log.info("catalog %s %s at schema %s", db_path, how, opened.to_revision)
        return cls(db_path, make_engine(db_path, read_only=read_only), opened, read_only=read_only)

    @property
    def read_only(self) -> bool:
        """Whether this catalog was opened read-only (every write raises CatalogError)."""
        return self._read_only

    @property
    def path(self) -> Path:
        """The catalog file."""
        return self._path

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for benchmarks and tools; prefer the methods)."""
        return self._engine

    def close(self) -> None:
        """Release every connection. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({str(self._path)!r})"

    @contextmanager
    def _reading(self, action: str) -> Iterator[Session]:
        if self._closed:
            raise CatalogError(f"cannot {action}: the catalog {self._path} is closed")
        with translate_errors(action), self._read() as session, session.begin():
            yield session

    @contextmanager
    def _writing(self, action: str) -> Iterator[Session]:
        if self._closed:
            raise CatalogError(f"cannot {action}: the catalog {self._path} is closed")
        if self._read_only:
            raise CatalogError(
                f"cannot {action}: the catalog {self._path} is open read-only "
                "(its data directory cannot be written)"
            )
        with translate_errors(action), self._write() as session, session.begin():
            yield session

    def revision(self) -> str | None:
        """The schema revision stamped in the catalog."""
        return migrate.current_revision(self._path)

    # -- checkpoints -------------------------------------------------------

    def add_checkpoint(
        self,
        round: int,
        cid: str,
        *,
        cid_version: int,
        codec: str,
        raw_size: int,
        stored_size: int,
        path: str,
        created_by: str | None = None,
        created_at: datetime | None = None,
        status: str = "ok",
        replace: bool = False,
    ) -> CheckpointRecord:
        """Record the local checkpoint of ``round``.

        One checkpoint per round: if the round already has a row with the same
        CID, that row is updated (path, sizes, status) and returned, so
        re-recording is idempotent. A different CID raises
        :class:`RoundConflictError` unless ``replace`` is true, in which case
        the row is replaced in the same transaction.
        """
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        _check_status(status)
        values: dict[str, Any] = {
            "cid": cid,
            "cid_version": cid_version,
            "codec": codec,
            "raw_size": raw_size,
            "stored_size": stored_size,
            "path": path,
            "created_by": created_by,
            "created_at": created_at or utcnow(),
            "status": status,
        }
        with self._writing(f"record the checkpoint of round {round}") as s:
            row = s.scalars(select(Checkpoint).where(Checkpoint.round == round)).one_or_none()
            if row is None:
                row = Checkpoint(round=round, **values)
                s.add(row)
            elif row.cid == cid or replace:
                if row.cid == cid and created_at is None:
                    values["created_at"] = row.created_at  # re-recording keeps the original time
                for key, value in values.items():
                    setattr(row, key, value)
            else:
                raise RoundConflictError(
                    f"round {round} already has checkpoint {row.cid}; refusing to record "
                    f"{cid} for the same round (delete round {round} first, or replace it)"
                )
            s.flush()
            return row.to_record()

    def get_checkpoint(self, round: int) -> CheckpointRecord | None:
        """The checkpoint row of ``round`` (any status), or None."""
        with self._reading(f"read round {round}") as s:
            row = s.scalars(select(Checkpoint).where(Checkpoint.round == round)).one_or_none()
            return None if row is None else row.to_record()

    def latest_checkpoint(self) -> CheckpointRecord | None:
        """The highest round whose checkpoint is ``ok`` (not missing or corrupt), or None."""
        row = self._read_one("find the latest checkpoint", _LATEST_CHECKPOINT_SQL)
        if row is None:
            return None
        ts = _parse_ts(row[6])
        assert ts is not None  # NOT NULL column
        return CheckpointRecord(
            round=row[0],
            cid=row[1],
            cid_version=row[2],
            codec=row[3],
            raw_size=row[4],
            stored_size=row[5],
            created_at=ts,
            created_by=row[7],
            path=row[8],
            status=row[9],
        )

    def latest_round(self) -> int | None:
        """The highest round with an ``ok`` checkpoint, or None (one index lookup)."""
        row = self._read_one("find the latest round", _LATEST_ROUND_SQL)
        return None if row is None else int(row[0])

    def _read_one(self, action: str, sql: str) -> tuple[Any, ...] | None:
        """First row of one read-only statement, straight through the pooled driver connection.

        The latest-round lookups are the catalog's hottest reads (every
        announcement, every status call): an ORM session costs ~0.3 ms around
        a ~5 us query. A single SELECT needs no explicit transaction (SQLite
        runs it in its own, seeing one snapshot); the pool's connection comes
        with the same pragmas as every other.
        """
        if self._closed:
            raise CatalogError(f"cannot {action}: the catalog {self._path} is closed")
        with translate_errors(action):
            conn = self._engine.raw_connection()
            try:
                cursor = conn.cursor()
                try:
                    cursor.execute(sql)
                    row = cursor.fetchone()
                finally:
                    cursor.close()
            finally:
                conn.close()  # back to the pool
        return None if row is None else tuple(row)

    def list_checkpoints(
        self, *, status: str | None = None, descending: bool = False, limit: int | None = None
    ) -> list[CheckpointRecord]:
        """Checkpoint rows ordered by round (optionally only one status, newest first, capped)."""
        stmt = select(Checkpoint)
        if status is not None:
            _check_status(status)
            stmt = stmt.where(Checkpoint.status == status)
        stmt = stmt.order_by(Checkpoint.round.desc() if descending else Checkpoint.round)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._reading("list checkpoints") as s:
            return [r.to_record() for r in s.scalars(stmt)]

    def list_rounds(self, *, status: str | None = None) -> list[int]:
        """Rounds with a checkpoint row, ascending (optionally only one status)."""
        # Plain driver SQL: this can return 100k+ ints, and ORM/Core row processing
        # would dominate the time (see fedstore/bench/catalog_bench.py).
        sql = "SELECT round FROM checkpoints"
        params: tuple[str, ...] = ()
        if status is not None:
            _check_status(status)
            sql += " WHERE status = ?"
            params = (status,)
        with self._reading("list rounds") as s:
            rows = s.connection().exec_driver_sql(sql + " ORDER BY round", params)
            return [r for (r,) in rows]

    def checkpoints_with_cid(self, cid: str) -> list[CheckpointRecord]:
        """Every local round whose checkpoint has this CID."""
        with self._reading(f"look up {cid}") as s:
            rows = s.scalars(select(Checkpoint).where(Checkpoint.cid == cid).order_by("round"))
            return [r.to_record() for r in rows]

    def delete_checkpoint(self, round: int, *, cid: str | None = None) -> CheckpointRecord | None:
        """Delete the row of ``round`` (only if it still has ``cid``, when given); return it."""
        with self._writing(f"delete round {round}") as s:
            stmt = select(Checkpoint).where(Checkpoint.round == round)
            if cid is not None:
                stmt = stmt.where(Checkpoint.cid == cid)
            row = s.scalars(stmt).one_or_none()
            if row is None:
                return None
            rec = row.to_record()
            s.delete(row)
            return rec

    def mark_checkpoint_status(self, round: int, status: str, *, cid: str | None = None) -> bool:
        """Set the status of round's row (only if it still has ``cid``, when given).

        Returns whether a row was changed.
        """
        _check_status(status)
        stmt = update(Checkpoint).where(Checkpoint.round == round).values(status=status)
        if cid is not None:
            stmt = stmt.where(Checkpoint.cid == cid)
        with self._writing(f"mark round {round} {status}") as s:
            return bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]

    # -- announcements -----------------------------------------------------

    def record_announcement(
        self,
        round: int,
        cid: str,
        sender: str,
        topic: str,
        received_at: datetime | None = None,
    ) -> AnnouncementRecord:
        """Record that ``sender`` announced ``cid`` for ``round`` on ``topic``.

        Repeats of the same (round, cid, sender, topic) bump ``times_heard``
        and ``last_received_at``. The sender is added to ``peers`` (or its
        ``last_seen`` refreshed).
        """
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        when = _ts(received_at or utcnow())
        with self._writing(f"record announcement of round {round}") as s:
            conn = s.connection()
            conn.exec_driver_sql(_TOUCH_PEER, (sender, when, when))
            conn.exec_driver_sql(_UPSERT_ANNOUNCEMENT, (round, cid, sender, topic, when, when, 1))
            row = conn.exec_driver_sql(
                "SELECT received_at, last_received_at, times_heard FROM announcements "
                "WHERE round = ? AND cid = ? AND sender_peer = ? AND topic = ?",
                (round, cid, sender, topic),
            ).one()
        return AnnouncementRecord(
            round=round,
            cid=cid,
            sender_peer=sender,
            topic=topic,
            received_at=_parse(row[0]),
            last_received_at=_parse(row[1]),
            times_heard=int(row[2]),
        )

    def announcements(
        self, *, round: int | None = None, cid: str | None = None, limit: int | None = None
    ) -> list[AnnouncementRecord]:
        """Announcements, newest round first (filtered by round and/or CID)."""
        stmt = select(Announcement)
        if round is not None:
            stmt = stmt.where(Announcement.round == round)
        if cid is not None:
            stmt = stmt.where(Announcement.cid == cid)
        stmt = stmt.order_by(Announcement.round.desc(), Announcement.received_at)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._reading("list announcements") as s:
            return [r.to_record() for r in s.scalars(stmt)]

    def prune_announcements(self, per_sender: int) -> int:
        """Keep each sender's ``per_sender`` newest announcements (highest rounds); drop the rest.

        Bounds what one peer can make the catalog hold, however patient it is.
        Returns the number of rows deleted.
        """
        if per_sender < 1:
            raise ValueError(f"per_sender must be >= 1, got {per_sender}")
        ranked = (
            select(
                Announcement.id,
                func.row_number()
                .over(
                    partition_by=Announcement.sender_peer,
                    order_by=(Announcement.round.desc(), Announcement.last_received_at.desc()),
                )
                .label("rank"),
            )
        ).subquery()
        doomed = select(ranked.c.id).where(ranked.c.rank > per_sender)
        with self._writing("prune announcements") as s:
            result = s.execute(delete(Announcement).where(Announcement.id.in_(doomed)))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def latest_announced(self) -> LatestAnnounced | None:
        """The highest announced round, its CID and the first peer that announced it.

        If peers announced different CIDs for that round, the CID announced by
        the most distinct peers wins (ties: the one heard first).
        """
        with self._reading("find the latest announced round") as s:
            top = s.scalar(select(func.max(Announcement.round)))
            if top is None:
                return None
            best = s.execute(
                select(Announcement.cid)
                .where(Announcement.round == top)
                .group_by(Announcement.cid)
                .order_by(
                    func.count(func.distinct(Announcement.sender_peer)).desc(),
                    func.min(Announcement.received_at),
                )
                .limit(1)
            ).scalar_one()
            sender = s.execute(
                select(Announcement.sender_peer)
                .where(Announcement.round == top, Announcement.cid == best)
                .order_by(Announcement.received_at, Announcement.id)
                .limit(1)
            ).scalar_one()
            return LatestAnnounced(round=int(top), cid=str(best), sender_peer=str(sender))

    # -- peers ---------------------------------------------------------------

    @staticmethod
    def _touch_peer(s: Session, peer_id: str, when: datetime) -> None:
        ins = sqlite_insert(Peer).values(
            peer_id=peer_id, addrs="[]", first_seen=when, last_seen=when
        )
        s.execute(
            ins.on_conflict_do_update(
                index_elements=["peer_id"],
                set_={"last_seen": func.max(Peer.last_seen, ins.excluded.last_seen)},
            )
        )

    def upsert_peer(
        self,
        peer_id: str,
        addrs: Sequence[str] | None = None,
        role: str | None = None,
        *,
        seen_at: datetime | None = None,
    ) -> PeerRecord:
        """Add or refresh a peer. ``addrs``/``role`` left as None keep what is stored."""
        when = seen_at or utcnow()
        with self._writing(f"record peer {peer_id}") as s:
            self._touch_peer(s, peer_id, when)
            changes: dict[str, Any] = {}
            if addrs is not None:
                changes["addrs"] = json.dumps(list(addrs))
            if role is not None:
                changes["role"] = role
            if changes:
                s.execute(update(Peer).where(Peer.peer_id == peer_id).values(**changes))
            row = s.get_one(Peer, peer_id, populate_existing=True)
            return row.to_record()

    def get_peer(self, peer_id: str) -> PeerRecord | None:
        """One peer, or None."""
        with self._reading(f"read peer {peer_id}") as s:
            row = s.get(Peer, peer_id)
            return None if row is None else row.to_record()

    def list_peers(self) -> list[PeerRecord]:
        """All known peers, most recently seen first."""
        with self._reading("list peers") as s:
            rows = s.scalars(select(Peer).order_by(Peer.last_seen.desc(), Peer.peer_id))
            return [r.to_record() for r in rows]

    # -- pins ----------------------------------------------------------------

    def set_pin(
        self,
        cid: str,
        backend: str,
        state: str,
        backend_ref: str | None = None,
        error: str | None = None,
    ) -> PinRecord:
        """Record the pin state of ``cid`` on ``backend``.

        ``pending`` marks an attempt about to start; ``pinned`` and ``failed``
        record its outcome and increment ``attempts``. ``backend_ref`` None
        keeps the stored one. ``pinned`` clears ``last_error``; ``failed``
        stores ``error``. Never pass secrets in ``error``.
        """
        if state not in PIN_STATES:
            raise ValueError(f"pin state must be one of {', '.join(PIN_STATES)}, got {state!r}")
        now = utcnow()
        with self._writing(f"record pin of {cid} on {backend}") as s:
            row = s.scalars(select(Pin).where(Pin.cid == cid, Pin.backend == backend)).one_or_none()
            if row is None:
                row = Pin(cid=cid, backend=backend, state=state, attempts=0, created_at=now)
                s.add(row)
            row.state = state
            row.updated_at = now
            if backend_ref is not None:
                row.backend_ref = backend_ref
            if state == "pinned":
                row.last_error = None
            elif error is not None:
                row.last_error = error
            if state in ("pinned", "failed"):
                row.attempts = (row.attempts or 0) + 1
            s.flush()
            return row.to_record()

    def pins_for(self, cid: str) -> list[PinRecord]:
        """Pin rows of one CID, by backend name."""
        with self._reading(f"list pins of {cid}") as s:
            rows = s.scalars(select(Pin).where(Pin.cid == cid).order_by(Pin.backend))
            return [r.to_record() for r in rows]

    def pins(self, state: str | None = None) -> list[PinRecord]:
        """All pin rows (optionally in one state), most recently updated first."""
        stmt = select(Pin)
        if state is not None:
            if state not in PIN_STATES:
                raise ValueError(f"pin state must be one of {', '.join(PIN_STATES)}")
            stmt = stmt.where(Pin.state == state)
        with self._reading("list pins") as s:
            rows = s.scalars(stmt.order_by(Pin.updated_at.desc(), Pin.cid, Pin.backend))
            return [r.to_record() for r in rows]

    def delete_pin(self, cid: str, backend: str) -> bool:
        """Forget the pin row of ``cid`` on ``backend``; return whether one existed."""
        with self._writing(f"delete pin of {cid} on {backend}") as s:
            res = s.execute(delete(Pin).where(Pin.cid == cid, Pin.backend == backend))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    # -- round metrics -------------------------------------------------------

    def record_round_metrics(
        self,
        round: int,
        cid: str,
        *,
        participants: int,
        num_samples: int,
        metrics: Mapping[str, Mapping[str, float]],
        recorded_at: datetime | None = None,
    ) -> int:
        """Record a federated round's metrics: ``metrics[source][name] = value``.

        ``source`` is one of ``trainers``, ``evaluate``, ``strategy``; names
        are 1-64 characters; values finite (ValueError otherwise, before
        anything is written). One transaction; a (round, cid, source, name)
        recorded again gets the new value. Returns the number of rows written.
        """
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        if participants < 0 or num_samples < 0:
            raise ValueError("participants and num_samples must be >= 0")
        when = recorded_at or utcnow()
        rows: list[dict[str, Any]] = []
        for source, values in metrics.items():
            if source not in METRIC_SOURCES:
                raise ValueError(
                    f"metric source must be one of {', '.join(METRIC_SOURCES)}, got {source!r}"
                )
            for name, value in values.items():
                if not isinstance(name, str) or not 1 <= len(name) <= 64:
                    raise ValueError(f"metric name must be 1-64 characters, got {name!r:.80}")
                v = float(value)
                if not math.isfinite(v):
                    raise ValueError(f"metric {source}/{name} is not finite: {value!r}")
                rows.append(
                    {
                        "round": round,
                        "cid": cid,
                        "participants": participants,
                        "num_samples": num_samples,
                        "source": source,
                        "name": name,
                        "value": v,
                        "recorded_at": when,
                    }
                )
        if not rows:
            return 0
        with self._writing(f"record the metrics of round {round}") as s:
            ins = sqlite_insert(RoundMetric)
            s.execute(
                ins.on_conflict_do_update(
                    index_elements=["round", "cid", "source", "name"],
                    set_={
                        "value": ins.excluded.value,
                        "participants": ins.excluded.participants,
                        "num_samples": ins.excluded.num_samples,
                        "recorded_at": ins.excluded.recorded_at,
                    },
                ),
                rows,
            )
        return len(rows)

    def round_metrics(
        self, *, round: int | None = None, source: str | None = None
    ) -> list[RoundMetricRecord]:
        """Recorded round metrics, by round, CID, source and name (optionally filtered)."""
        stmt = select(RoundMetric)
        if round is not None:
            stmt = stmt.where(RoundMetric.round == round)
        if source is not None:
            if source not in METRIC_SOURCES:
                raise ValueError(f"metric source must be one of {', '.join(METRIC_SOURCES)}")
            stmt = stmt.where(RoundMetric.source == source)
        stmt = stmt.order_by(
            RoundMetric.round, RoundMetric.cid, RoundMetric.source, RoundMetric.name
        )
        with self._reading("list round metrics") as s:
            return [r.to_record() for r in s.scalars(stmt)]

    # -- federations -----------------------------------------------------------

    def record_manifest(
        self, cid: str, *, name: str, owner: str, previous: str | None, members: int, document: str
    ) -> ManifestRecord:
        """Keep a signed federation manifest: its CID, the facts the federation layer
        parsed and checked from it, and the signed document itself.

        Recording the same CID again changes nothing. (Parsing and checking the
        signature belong to :mod:`fedstore.federation.manifest`, above this layer.)
        """
        with self._writing(f"record manifest {cid}") as s:
            s.execute(
                sqlite_insert(Manifest)
                .values(
                    cid=cid,
                    name=name,
                    owner=owner,
                    previous=previous,
                    members=members,
                    document=document,
                    recorded_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["cid"])
            )
            row = s.scalars(select(Manifest).where(Manifest.cid == cid)).one()
            return row.to_record()

    def get_manifest(self, cid: str) -> ManifestRecord | None:
        """The manifest recorded under ``cid``, if any."""
        with self._reading(f"read manifest {cid}") as s:
            row = s.scalars(select(Manifest).where(Manifest.cid == cid)).first()
            return None if row is None else row.to_record()

    def list_manifests(self) -> list[ManifestRecord]:
        """Every manifest recorded, oldest first."""
        with self._reading("list manifests") as s:
            return [r.to_record() for r in s.scalars(select(Manifest).order_by(Manifest.id))]

    def record_federation_round(self, entry: FederationRoundRecord) -> None:
        """Record a global model adopted or refused in a federation run (replaces the same one)."""
        if entry.status not in FEDERATION_ROUND_STATUSES:
            raise ValueError(
                f"status must be one of {FEDERATION_ROUND_STATUSES}, got {entry.status!r}"
            )
        if entry.round < 0:
            raise ValueError(f"round must be >= 0, got {entry.round}")
        values = {
            "manifest_cid": entry.manifest,
            "session": entry.session,
            "round": entry.round,
            "cid": entry.cid,
            "status": entry.status,
            "aggregator": entry.aggregator,
            "how": entry.how,
            "expected_cid": entry.expected,
            "participants": entry.participants,
            "detail": entry.detail[:2000] or None,
            "rejections": json.dumps(dict(sorted(entry.rejections.items())))
            if entry.rejections
            else None,
            "recorded_at": entry.recorded_at or utcnow(),
        }
        with self._writing(f"record federation round {entry.round}") as s:
            ins = sqlite_insert(FederationRound).values(**values)
            s.execute(
                ins.on_conflict_do_update(
                    index_elements=["manifest_cid", "session", "round", "cid"],
                    set_={
                        k: ins.excluded[k]
                        for k in values
                        if k not in ("manifest_cid", "session", "round", "cid")
                    },
                )
            )

    def federation_rounds(
        self, *, manifest: str | None = None, session: str | None = None
    ) -> list[FederationRoundRecord]:
        """Recorded federation rounds (optionally of one manifest / run), in recording order."""
        stmt = select(FederationRound)
        if manifest is not None:
            stmt = stmt.where(FederationRound.manifest_cid == manifest)
        if session is not None:
            stmt = stmt.where(FederationRound.session == session)
        with self._reading("list federation rounds") as s:
            return [r.to_record() for r in s.scalars(stmt.order_by(FederationRound.id))]

    def last_adopted_round(self, manifest: str) -> FederationRoundRecord | None:
        """The newest adopted model of the newest run of ``manifest`` (a member resumes there)."""
        with self._reading("read the last adopted federation round") as s:
            newest = s.scalars(
                select(FederationRound)
                .where(
                    FederationRound.manifest_cid == manifest, FederationRound.status == "adopted"
                )
                .order_by(FederationRound.id.desc())
                .limit(1)
            ).first()
            if newest is None:
                return None
            row = s.scalars(
                select(FederationRound)
                .where(
                    FederationRound.manifest_cid == manifest,
                    FederationRound.session == newest.session,
                    FederationRound.status == "adopted",
                )
                .order_by(FederationRound.round.desc(), FederationRound.id.desc())
                .limit(1)
            ).one()
            return row.to_record()

    # -- node runs -----------------------------------------------------------

    #: Node runs kept; older rows are deleted when a run starts.
    NODE_RUNS_KEPT = 100

    def record_node_start(
        self,
        *,
        peer_id: str,
        role: str,
        backends: Sequence[str],
        addrs: Sequence[str],
        version: str,
    ) -> int:
        """Record that a node starts on this directory with this chain; returns the run id.

        Only the newest :attr:`NODE_RUNS_KEPT` runs are kept.
        """
        if any("," in b for b in backends):
            raise ValueError(f"backend names cannot contain ',': {list(backends)!r}")
        with self._writing("record the node's start") as s:
            run = NodeRun(
                peer_id=peer_id,
                role=role,
                backends=",".join(backends),
                addrs=json.dumps(list(addrs)),
                version=version,
                started_at=utcnow(),
            )
            s.add(run)
            s.flush()
            keep = select(NodeRun.id).order_by(NodeRun.id.desc()).limit(self.NODE_RUNS_KEPT)
            s.execute(delete(NodeRun).where(NodeRun.id.not_in(keep.scalar_subquery())))
            return int(run.id)

    def record_node_stop(self, run_id: int) -> None:
        """Record that run *run_id* stopped cleanly."""
        with self._writing("record the node's stop") as s:
            s.execute(update(NodeRun).where(NodeRun.id == run_id).values(stopped_at=utcnow()))

    def node_runs(self, *, limit: int = 10) -> list[NodeRunRecord]:
        """The newest node runs on this directory, newest first."""
        with self._reading("list node runs") as s:
            rows = s.scalars(select(NodeRun).order_by(NodeRun.id.desc()).limit(limit))
            return [r.to_record() for r in rows]

    def last_node_run(self) -> NodeRunRecord | None:
        """The newest node run, or None if no node ever ran on this directory."""
        runs = self.node_runs(limit=1)
        return runs[0] if runs else None

    # -- views and ad-hoc SQL ------------------------------------------------

    def round_history(self, *, limit: int | None = None) -> list[RoundHistoryRow]:
        """Rows of the ``round_history`` view, newest round first."""
        sql = "SELECT * FROM round_history"
        params: dict[str, Any] = {}
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        with self._reading("read the round history") as s:
            result = s.execute(text(sql), params).mappings().all()
        return [
            RoundHistoryRow(
                round=int(r["round"]),
                cid=str(r["cid"]),
                stored_locally=bool(r["stored_locally"]),
                local_status=r["local_status"],
                stored_size=r["stored_size"],
                announced_by=int(r["announced_by"]),
                first_heard=_parse_ts(r["first_heard"]),
                pinned_on=int(r["pinned_on"]),
                pin_states=r["pin_states"],
            )
            for r in result
        ]

    def read_only_query(
        self,
        sql: str,
        params: tuple[object, ...] | dict[str, object] = (),
        *,
        max_rows: int | None = None,
        timeout: float = 30.0,
    ) -> QueryResult:
        """Run one SELECT on a separate read-only connection (see :mod:`.readonly`).

        Unpacks as ``columns, rows``. A statement that would write raises
        :class:`~fedstore.catalog.readonly.ReadOnlyViolation` and changes nothing.
        """
        return read_only_query(self._path, sql, params, max_rows=max_rows, timeout=timeout)


def _check_status(status: str) -> None:
    if status not in CHECKPOINT_STATUSES:
        raise ValueError(
            f"checkpoint status must be one of {', '.join(CHECKPOINT_STATUSES)}, got {status!r}"
        )

"""What peers claim and what sync learned about those claims: the catalog's hot write path.

A mixin of :class:`~fedstore.catalog.catalog.Catalog` (its methods are the
catalog's; :class:`~fedstore.catalog.aio.AsyncCatalog` has their twins):

* **Announcements in batches.** :meth:`ClaimsMixin.record_announcements`
  records many heard announcements in one transaction with two plain SQL
  statements run ``executemany`` (the senders into ``peers``, the
  announcements upserted into ``announcements``): one fsync per batch, no
  ORM objects. A node under a flood writes what its announcement queue holds
  at once instead of one transaction each (the ORM path cost ~2.7 ms of CPU
  per announcement).
* **Sync candidates, bounded per sender.** :meth:`ClaimsMixin.sync_claims`
  gives the highest claims above a round with at most *per_sender* from any
  one peer, so a peer announcing hundreds of high rounds cannot push every
  other peer's claims out of sync's window.
* **Failed claims.** :meth:`ClaimsMixin.record_failed_claim` remembers a
  (round, CID) sync could not fetch and every peer that claimed it (table
  ``failed_claims``, kept across restarts), and expires those peers' claims
  of it (their announcement rows are deleted: they could not serve what they
  announced). Sync demotes and backs off from failed candidates and from
  claims of peers with failures (:mod:`fedstore.p2p.sync`).
  :meth:`ClaimsMixin.prune_failed_claims` bounds the table by age and count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy.orm import Session

from fedstore.catalog.models import utcnow
from fedstore.catalog.records import FailedClaimRecord

__all__ = ["ClaimsMixin", "HeardAnnouncement"]

#: Longest error text kept per failed claim.
MAX_ERROR_TEXT = 500
#: Most claimers of one candidate recorded per failure (bounds one write).
MAX_CLAIMERS = 64


class HeardAnnouncement(NamedTuple):
    """One announcement to record: *sender* claimed *cid* for *round* on *topic*.

    *times* repeats heard between *received_at* and *last_received_at*
    (default: once, at *received_at*).
    """

    round: int
    cid: str
    sender: str
    topic: str
    received_at: datetime
    last_received_at: datetime | None = None
    times: int = 1


def _ts(when: datetime) -> str:
    """A datetime as the catalog stores it (naive UTC text, as SQLAlchemy writes it)."""
    if when.tzinfo is None:
        raise ValueError("catalog timestamps must be timezone-aware (use datetime.now(UTC))")
    u = when.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d} "
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}"
    )


def _parse(text: object) -> datetime:
    return datetime.fromisoformat(str(text)).replace(tzinfo=UTC)


_TOUCH_PEER = (
    "INSERT INTO peers (peer_id, addrs, first_seen, last_seen) VALUES (?, '[]', ?, ?) "
    "ON CONFLICT (peer_id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)"
)
_UPSERT_ANNOUNCEMENT = (
    "INSERT INTO announcements "
    "(round, cid, sender_peer, topic, received_at, last_received_at, times_heard) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (round, cid, sender_peer, topic) DO UPDATE SET "
    "times_heard = times_heard + excluded.times_heard, "
    "last_received_at = max(last_received_at, excluded.last_received_at), "
    "received_at = min(received_at, excluded.received_at)"
)
_CLAIMS_PER_SENDER = """
SELECT round, cid, sender_peer FROM (
    SELECT round, cid, sender_peer,
           row_number() OVER (
               PARTITION BY sender_peer ORDER BY round DESC, last_received_at DESC
           ) AS rank
    FROM announcements WHERE round > ?
) WHERE rank <= ? ORDER BY round DESC, cid, sender_peer LIMIT ?
"""
_RECORD_FAILURE = (
    "INSERT INTO failed_claims "
    "(round, cid, peer, attempts, first_failed_at, last_failed_at, last_error) "
    "VALUES (?, ?, ?, 1, ?, ?, ?) "
    "ON CONFLICT (round, cid, peer) DO UPDATE SET attempts = attempts + 1, "
    "last_failed_at = excluded.last_failed_at, last_error = excluded.last_error"
)
_FAILED_COLUMNS = "round, cid, peer, attempts, first_failed_at, last_failed_at, last_error"


class ClaimsMixin:
    """Announcement batches, per-sender sync claims and failed claims (module docstring)."""

    def _writing(self, action: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _reading(self, action: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    # -- announcements ---------------------------------------------------------------

    def record_announcements(self, batch: Sequence[HeardAnnouncement]) -> int:
        """Record every announcement of *batch* in one transaction; return how many.

        Same effect as :meth:`record_announcement` for each (repeats bump
        ``times_heard`` by their *times*, senders are added to ``peers``), at
        the cost of one commit. ValueError (nothing written) for a negative round or a naive
        timestamp. An empty batch writes nothing.
        """
        if not batch:
            return 0
        rows = []
        peers: dict[str, str] = {}
        for a in batch:
            if a.round < 0:
                raise ValueError(f"round must be >= 0, got {a.round}")
            if a.times < 1:
                raise ValueError(f"times must be >= 1, got {a.times}")
            first = _ts(a.received_at)
            last = first if a.last_received_at is None else _ts(a.last_received_at)
            rows.append((a.round, a.cid, a.sender, a.topic, first, last, a.times))
            peers[a.sender] = max(peers.get(a.sender, last), last)
        with self._writing(f"record {len(rows)} announcement(s)") as s:
            conn = s.connection()
            conn.exec_driver_sql(_TOUCH_PEER, [(p, w, w) for p, w in peers.items()])
            conn.exec_driver_sql(_UPSERT_ANNOUNCEMENT, rows)
        return len(rows)

    def sync_claims(
        self, *, above: int | None = None, per_sender: int = 3, limit: int = 200
    ) -> list[tuple[int, str, str]]:
        """``(round, cid, sender)`` claims above *above*, at most *per_sender* per sender.

        Each sender contributes its highest rounds; the result is ordered by
        round, highest first, and capped at *limit* rows.
        """
        if per_sender < 1 or limit < 1:
            raise ValueError("per_sender and limit must be >= 1")
        floor = -1 if above is None else above
        with self._reading("list sync claims") as s:
            rows = s.connection().exec_driver_sql(_CLAIMS_PER_SENDER, (floor, per_sender, limit))
            return [(int(r), str(c), str(p)) for r, c, p in rows]

    # -- failed claims -------------------------------------------------------------

    def record_failed_claim(
        self,
        round: int,
        cid: str,
        peers: Iterable[str],
        error: str = "",
        *,
        failed_at: datetime | None = None,
    ) -> int:
        """Remember that (*round*, *cid*), claimed by *peers*, could not be fetched.

        Bumps each claimer's row (at most :data:`MAX_CLAIMERS` of them) and
        deletes their announcements of (*round*, *cid*) in the same
        transaction (the claims expire: they could not be served). *error*
        is stored shortened; never pass secrets. Returns the candidate's
        attempts so far (the highest count among its claimers).
        """
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        claimers = sorted(set(peers))[:MAX_CLAIMERS] or [""]
        when = _ts(failed_at or utcnow())
        text = error[:MAX_ERROR_TEXT] or None
        with self._writing(f"record the failed claim of round {round}") as s:
            conn = s.connection()
            conn.exec_driver_sql(
                _RECORD_FAILURE, [(round, cid, p, when, when, text) for p in claimers]
            )
            expired = [(round, cid, p) for p in claimers if p]
            if expired:
                conn.exec_driver_sql(
                    "DELETE FROM announcements WHERE round = ? AND cid = ? AND sender_peer = ?",
                    expired,
                )
            (attempts,) = conn.exec_driver_sql(
                "SELECT max(attempts) FROM failed_claims WHERE round = ? AND cid = ?",
                (round, cid),
            ).one()
        return int(attempts)

    def failed_claims(self, *, limit: int | None = None) -> list[FailedClaimRecord]:
        """Failed claims, most recently failed first (capped at *limit*)."""
        sql = f"SELECT {_FAILED_COLUMNS} FROM failed_claims ORDER BY last_failed_at DESC, id DESC"
        params: tuple[int, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        with self._reading("list failed claims") as s:
            return list(_failed_records(s.connection().exec_driver_sql(sql, params)))

    def clear_failed_claim(self, round: int, cid: str) -> int:
        """Forget the failures of (*round*, *cid*) (it was fetched after all); rows removed."""
        with self._writing(f"clear the failed claim of round {round}") as s:
            res = s.connection().exec_driver_sql(
                "DELETE FROM failed_claims WHERE round = ? AND cid = ?", (round, cid)
            )
            return int(res.rowcount or 0)

    def prune_failed_claims(self, *, older_than: datetime, keep: int) -> int:
        """Drop failures last seen before *older_than*, then all but the *keep* newest.

        Bounds the table whatever peers claim. Returns the rows deleted.
        """
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        with self._writing("prune failed claims") as s:
            conn = s.connection()
            old = conn.exec_driver_sql(
                "DELETE FROM failed_claims WHERE last_failed_at < ?", (_ts(older_than),)
            ).rowcount
            extra = conn.exec_driver_sql(
                "DELETE FROM failed_claims WHERE id NOT IN (SELECT id FROM failed_claims "
                "ORDER BY last_failed_at DESC, id DESC LIMIT ?)",
                (keep,),
            ).rowcount
            return int(old or 0) + int(extra or 0)


def _failed_records(rows: Iterable[Sequence[object]]) -> Iterator[FailedClaimRecord]:
    for r in rows:
        yield FailedClaimRecord(
            round=int(r[0]),  # type: ignore[call-overload]
            cid=str(r[1]),
            peer=str(r[2]),
            attempts=int(r[3]),  # type: ignore[call-overload]
            first_failed_at=_parse(r[4]),
            last_failed_at=_parse(r[5]),
            last_error=None if r[6] is None else str(r[6]),
        )

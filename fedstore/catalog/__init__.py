"""The SQLite catalog of a fedstore node (SQLAlchemy 2 + Alembic).

One file, ``<data dir>/catalog.sqlite``, records local checkpoints, CID
announcements heard from peers, the peers themselves, pin states per
storage backend, and the metrics of federated rounds. Queries return plain
dataclasses. See docs/CATALOG.md for the tables and the views users can
query with ``fedstore catalog sql``.

Public API::

    cat = Catalog.open(data_dir)        # create / auto-upgrade under a file lock
    cat.latest_checkpoint()             # -> CheckpointRecord | None
    acat = AsyncCatalog(cat)            # same methods, awaitable, in worker threads
"""

from fedstore.catalog.aio import AsyncCatalog
from fedstore.catalog.catalog import (
    CATALOG_FILENAME,
    Catalog,
    HeardAnnouncement,
    RoundConflictError,
    resolve_db_path,
)
from fedstore.catalog.readonly import ReadOnlyViolation, copy_read_only, read_only_query
from fedstore.catalog.records import (
    AnnouncementRecord,
    CheckpointRecord,
    FailedClaimRecord,
    LatestAnnounced,
    NodeRunRecord,
    PeerRecord,
    PinRecord,
    QueryResult,
    RoundHistoryRow,
    RoundMetricRecord,
)

__all__ = [
    "CATALOG_FILENAME",
    "AnnouncementRecord",
    "AsyncCatalog",
    "Catalog",
    "CheckpointRecord",
    "FailedClaimRecord",
    "HeardAnnouncement",
    "LatestAnnounced",
    "NodeRunRecord",
    "PeerRecord",
    "PinRecord",
    "QueryResult",
    "ReadOnlyViolation",
    "RoundConflictError",
    "RoundHistoryRow",
    "RoundMetricRecord",
    "copy_read_only",
    "read_only_query",
    "resolve_db_path",
]

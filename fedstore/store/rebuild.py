"""Rebuild a lost catalog from the checkpoint files of a data directory.

A catalog that was truncated to zero bytes, deleted or damaged beyond
reading leaves the checkpoints themselves in ``rounds/``, each named
``round_NNNNNN_<CID>.fsck``. :func:`rebuild_catalog` makes a new catalog and
records every file that proves itself: its bytes hash to the CID in its name
and they are a valid checkpoint (the same checks a received checkpoint
passes). Files that fail are reported and left where they are; of two
intact files for one round, the newer (by modification time) is recorded.

What the catalog held besides the checkpoints (announcements heard, peers,
pin rows, round metrics) cannot be recovered from the files; the report says
so. The old catalog files (``catalog.sqlite`` and its ``-wal``/``-shm``) are
moved aside to ``catalog.sqlite.lost-<UTC time>`` first, never deleted.

An intact catalog is not replaced unless asked (``force``). The rebuild
holds the data directory's node lock, so it never runs beside a node.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fedstore.catalog import Catalog, CheckpointRecord, migrate, resolve_db_path
from fedstore.errors import CatalogError, FedstoreError
from fedstore.store.dirlock import DataDirLock
from fedstore.store.paths import CHECKPOINT_SUFFIX, ROUNDS_DIR, parse_checkpoint_filename

__all__ = ["RebuildReport", "rebuild_catalog"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RebuildReport:
    """What :func:`rebuild_catalog` did."""

    catalog: Path
    #: Rows recorded, by round.
    recorded: list[CheckpointRecord] = field(default_factory=list)
    #: Files left unrecorded (relative to the data directory) and why.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: Old catalog files moved aside (original name -> new path).
    moved: list[Path] = field(default_factory=list)


def _catalog_state(db: Path) -> str:
    """``absent``, ``empty``, ``broken`` (unreadable or foreign) or ``intact``."""
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        return "absent"
    if size == 0:
        return "empty"
    try:
        status = migrate.schema_state(db).status
    except CatalogError:
        return "broken"
    return "intact" if status in ("current", "behind", "ahead") else "broken"


def _move_aside(db: Path) -> list[Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = db.with_name(db.name + suffix)
        if src.exists():
            dest = db.with_name(f"{db.name}.lost-{stamp}{suffix}")
            os.replace(src, dest)
            moved.append(dest)
    return moved


def _candidates(directory: Path) -> tuple[list[tuple[int, str, Path]], list[tuple[str, str]]]:
    """Round files by round, newest first within a round; names that are not round files."""
    rounds = directory / ROUNDS_DIR
    found: list[tuple[int, float, str, Path]] = []
    skipped: list[tuple[str, str]] = []
    if not rounds.is_dir():
        return [], skipped
    for entry in sorted(rounds.iterdir()):
        rel = f"{ROUNDS_DIR}/{entry.name}"
        if not entry.name.endswith(CHECKPOINT_SUFFIX) or not entry.is_file():
            continue
        parsed = parse_checkpoint_filename(entry.name)
        if parsed is None:
            skipped.append((rel, "not named round_<N>_<CID>.fsck"))
            continue
        found.append((parsed[0], -entry.stat().st_mtime, parsed[1], entry))
    found.sort()
    return [(r, cid, path) for r, _m, cid, path in found], skipped


def rebuild_catalog(directory: str | Path, *, force: bool = False) -> RebuildReport:
    """Make a new catalog for *directory* from its round files (module docstring).

    Raises :class:`CatalogError` if the catalog is intact and *force* is
    false, and :class:`~fedstore.errors.ConfigError` if a node holds the
    directory.
    """
    from fedstore.ipld.cid import parse_cid, verify_bytes
    from fedstore.store.local import describe_checkpoint

    directory = Path(directory).expanduser()
    db = resolve_db_path(directory)
    with DataDirLock(directory, purpose="db rebuild"):
        state = _catalog_state(db)
        if state == "intact" and not force:
            raise CatalogError(
                f"the catalog {db} is intact; rebuilding would drop its announcements, peers "
                "and pins (pass --force to rebuild anyway; the old one is kept aside)"
            )
        report = RebuildReport(db)
        migrate.check_writable(db)
        report.moved = _move_aside(db)
        candidates, report.skipped = _candidates(directory)
        with Catalog.open(directory) as catalog:
            for round_, cid, path in candidates:
                rel = f"{ROUNDS_DIR}/{path.name}"
                if report.recorded and report.recorded[-1].round == round_:
                    report.skipped.append((rel, f"round {round_} is recorded from a newer file"))
                    continue
                try:
                    data = path.read_bytes()
                    verify_bytes(cid, data)
                    codec, raw_size = describe_checkpoint(data)
                    rec = catalog.add_checkpoint(
                        round_,
                        cid,
                        cid_version=parse_cid(cid).version,
                        codec=codec,
                        raw_size=raw_size,
                        stored_size=len(data),
                        path=rel,
                        created_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                    )
                except (FedstoreError, ValueError) as exc:
                    report.skipped.append((rel, str(exc)))
                    continue
                except OSError as exc:
                    report.skipped.append((rel, exc.strerror or str(exc)))
                    continue
                report.recorded.append(rec)
        log.info(
            "rebuilt catalog %s: %d round(s), %d file(s) skipped",
            db,
            len(report.recorded),
            len(report.skipped),
        )
        return report

"""Bring the catalog and the files on disk back into agreement.

Run when a :class:`~fedstore.store.LocalStore` opens (and on demand). It

* removes stale partial writes from ``<dir>/tmp`` (only when no save is in
  progress in any process: it needs the exclusive store lock, else it skips
  this step and says so);
* flags rows whose file is missing (``missing``) or has the wrong size or
  bytes (``corrupt``), and sets rows whose file is back and intact to ``ok``;
* reports files in ``<dir>/rounds`` that no row points at (orphans: e.g. a
  save killed after its rename but before its catalog row was committed).
  Orphans are only reported, never deleted.

On a read-only catalog (a read-only data directory) it changes nothing:
problems are reported, not flagged, and temp files are left alone.

Verification levels: ``size`` checks existence and size of every file;
``latest`` (default) additionally hashes the newest ``ok`` checkpoint against
its CID; ``full`` hashes every file. Loading a checkpoint always hashes it.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedstore.catalog import Catalog, CheckpointRecord
from fedstore.errors import IntegrityError
from fedstore.store.paths import CHECKPOINT_SUFFIX, ROUNDS_DIR, TMP_DIR

__all__ = ["ReconcileReport", "VerifyLevel", "reconcile"]

VerifyLevel = Literal["size", "latest", "full"]


@dataclass(slots=True)
class ReconcileReport:
    """What :func:`reconcile` found and did."""

    #: Temp files removed (names relative to the data dir).
    removed_temp_files: list[str] = field(default_factory=list)
    #: True when a save was running elsewhere, so temp files were left alone.
    temp_cleanup_skipped: bool = False
    #: Rounds newly flagged ``missing`` (file gone).
    missing: list[int] = field(default_factory=list)
    #: Rounds newly flagged ``corrupt`` (wrong size or bytes not matching the CID).
    corrupt: list[int] = field(default_factory=list)
    #: Rounds flagged earlier whose file is present and intact again, now ``ok``.
    recovered: list[int] = field(default_factory=list)
    #: Files in rounds/ no catalog row points at (relative names), left in place.
    orphans: list[str] = field(default_factory=list)
    #: Rows examined and files hashed.
    checked: int = 0
    hashed: int = 0
    #: False when the catalog was read-only: problems were found, not flagged.
    flagged: bool = True

    @property
    def clean(self) -> bool:
        """True when nothing needed attention."""
        return not (
            self.removed_temp_files
            or self.missing
            or self.corrupt
            or self.recovered
            or self.orphans
        )

    def lines(self) -> list[str]:
        """Human-readable lines describing what happened (empty when clean)."""
        out = []
        if self.removed_temp_files:
            out.append(f"removed {len(self.removed_temp_files)} stale temp file(s)")
        if self.temp_cleanup_skipped:
            out.append("left temp files alone: a save is in progress in another process")
        flagged = "flagged " if self.flagged else "found (catalog read-only, not flagged) "
        if self.missing:
            out.append(f"{flagged}missing (file gone): rounds {_rounds(self.missing)}")
        if self.corrupt:
            out.append(f"{flagged}corrupt (bytes do not match CID): rounds {_rounds(self.corrupt)}")
        if self.recovered:
            out.append(f"file intact again, {flagged}ok: rounds {_rounds(self.recovered)}")
        if self.orphans:
            out.append(
                f"{len(self.orphans)} file(s) in {ROUNDS_DIR}/ not in the catalog (left in "
                f"place): {', '.join(self.orphans[:5])}{' ...' if len(self.orphans) > 5 else ''}"
            )
        return out


def _rounds(rs: list[int]) -> str:
    shown = ", ".join(map(str, rs[:10]))
    return shown + (f" (+{len(rs) - 10} more)" if len(rs) > 10 else "")


def _hash_ok(path: Path, cid: str) -> bool:
    from fedstore.ipld.cid import verify_bytes

    try:
        verify_bytes(cid, path.read_bytes())
    except IntegrityError:
        return False
    return True


def _clean_tmp(data_dir: Path, lock_path: Path, report: ReconcileReport) -> None:
    tmp = data_dir / TMP_DIR
    if not tmp.is_dir():
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report.temp_cleanup_skipped = any(tmp.iterdir())
            return
        for entry in sorted(tmp.iterdir()):
            if entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)
                report.removed_temp_files.append(f"{TMP_DIR}/{entry.name}")
    finally:
        os.close(fd)


def _check_row(
    data_dir: Path, rec: CheckpointRecord, hash_it: bool, report: ReconcileReport
) -> str:
    path = data_dir / rec.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != rec.stored_size:
        return "corrupt"
    if hash_it:
        report.hashed += 1
        if not _hash_ok(path, rec.cid):
            return "corrupt"
    return "ok"


def reconcile(
    data_dir: Path, catalog: Catalog, lock_path: Path, verify: VerifyLevel = "latest"
) -> ReconcileReport:
    """Reconcile ``data_dir`` with ``catalog``; see the module docstring."""
    if verify not in ("size", "latest", "full"):
        raise ValueError(f"verify must be 'size', 'latest' or 'full', not {verify!r}")
    report = ReconcileReport(flagged=not catalog.read_only)
    if not catalog.read_only:
        _clean_tmp(data_dir, lock_path, report)

    rows = catalog.list_checkpoints(descending=True)
    latest_ok_round = next((r.round for r in rows if r.status == "ok"), None)
    for rec in rows:
        report.checked += 1
        hash_it = verify == "full" or (verify == "latest" and rec.round == latest_ok_round)
        # A flagged row whose file came back is only trusted after hashing it.
        if rec.status != "ok":
            hash_it = True
        status = _check_row(data_dir, rec, hash_it, report)
        if status == rec.status:
            continue
        # Conditional on the CID: a concurrent replace must not be flagged by mistake.
        if report.flagged and not catalog.mark_checkpoint_status(rec.round, status, cid=rec.cid):
            continue
        if status == "missing":
            report.missing.append(rec.round)
        elif status == "corrupt":
            report.corrupt.append(rec.round)
        else:
            report.recovered.append(rec.round)

    referenced = {Path(r.path).name for r in rows}
    rounds_dir = data_dir / ROUNDS_DIR
    if rounds_dir.is_dir():
        with os.scandir(rounds_dir) as it:
            for entry in it:
                if entry.name.endswith(CHECKPOINT_SUFFIX) and entry.name not in referenced:
                    report.orphans.append(f"{ROUNDS_DIR}/{entry.name}")
        if report.orphans:
            # A save may have committed its row after we listed the rows: look again.
            now = {Path(r.path).name for r in catalog.list_checkpoints()}
            report.orphans = sorted(o for o in report.orphans if Path(o).name not in now)
    return report

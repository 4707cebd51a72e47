"""The local checkpoint store: atomic files plus catalog rows.

Save path (crash-safe at every step)::

    encode -> CID -> tmp/<name>.part, write, fsync -> rename into rounds/ ->
    fsync rounds/ -> catalog row committed

A process killed before the rename leaves only a temp file (removed by the
next reconcile); killed after the rename but before the commit, an orphan
file no row points at (reported by reconcile). Either way the catalog never
points at a missing or torn file, and the previous latest checkpoint stays
loadable. Deleting goes the other way round: row first, then the file.

The latest round and its CID always come from the catalog, never from
listing the directory.

One checkpoint per round. Saving a round again with the same CID is a no-op
(and repairs a missing or corrupt file). A different CID for a round that
already has one raises :class:`~fedstore.catalog.RoundConflictError` unless
``replace=True``; then the new file is written first, the row switched in one
transaction, and the old file removed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Self, TypeVar

import numpy as np

from fedstore.catalog import Catalog, CheckpointRecord, RoundConflictError, resolve_db_path
from fedstore.catalog.engine import is_writable
from fedstore.errors import CatalogError, CheckpointNotFoundError, IntegrityError
from fedstore.fsutil import fsync_dir, write_atomic
from fedstore.rounds import MAX_ROUND
from fedstore.store.dirlock import DataDirLock
from fedstore.store.paths import (
    CHECKPOINT_SUFFIX,
    ROUNDS_DIR,
    TMP_DIR,
    checkpoint_filename,
)
from fedstore.store.reconcile import ReconcileReport, VerifyLevel, reconcile

if TYPE_CHECKING:
    from fedstore.format import Checkpoint

__all__ = ["LocalStore"]

log = logging.getLogger(__name__)

LOCK_NAME = "store.lock"

_Data = TypeVar("_Data", bytes, np.ndarray)


def describe_checkpoint(data: bytes) -> tuple[str, int]:
    """``(codec, raw_size)`` of checkpoint bytes, e.g. ``("fsck2+zstd+shuffle", 8448)``.

    Raises FormatError if ``data`` is not a fedstore checkpoint, and
    SizeLimitError if it would decode past the size cap (a checkpoint nobody
    could load must never become the node's head).
    """
    from fedstore import format as fmt

    info = fmt.inspect(data)
    info.check_decoded_size()
    codec = f"fsck{info.format_version}+{info.codec}" + ("+shuffle" if info.shuffled else "")
    return codec, int(info.raw_size)


def _refuse_lost_catalog(directory: Path) -> None:
    """CatalogError when the catalog is gone (or empty) but round files are not."""
    db = resolve_db_path(directory)
    try:
        missing = db.stat().st_size == 0
    except FileNotFoundError:
        missing = True
    if not missing:
        return
    rounds = directory / ROUNDS_DIR
    try:
        with os.scandir(rounds) as it:
            count = sum(1 for e in it if e.name.endswith(CHECKPOINT_SUFFIX))
    except (FileNotFoundError, NotADirectoryError):
        return
    if count:
        what = "empty (0 bytes)" if db.exists() else "missing"
        raise CatalogError(
            f"the catalog {db} is {what} but {rounds} holds {count} checkpoint file(s): "
            f"its history would be lost. Rebuild it from those files with: "
            f"fedstore db rebuild --dir {directory}"
        )


class LocalStore:
    """Checkpoints of one node, in ``directory`` with its catalog.

    ``catalog`` defaults to the catalog in ``directory`` (opened, and closed
    by :meth:`close`). ``peer_id`` is recorded as ``created_by``;
    ``cid_version`` (0 or 1) is the CID version of saved checkpoints.
    ``verify_on_open`` runs :meth:`reconcile` at that level when the store
    opens (None: skip); its report is kept in :attr:`last_reconcile`.

    ``exclusive`` holds the data directory's node lock
    (:class:`~fedstore.store.dirlock.DataDirLock`) until :meth:`close`: a
    second exclusive store (a second node) on the same directory fails at
    once with a :class:`~fedstore.errors.ConfigError` naming the holder's
    pid. ``read_only=True`` opens the catalog read-only and changes nothing
    on disk (reconcile only reports; loads do not flag rows); ``None`` does
    so when the directory cannot be written (commands that only read).

    A store that opens its own catalog refuses a directory whose catalog is
    missing or empty while ``rounds/`` holds checkpoint files: that history
    would be lost silently (``fedstore db rebuild`` recovers it).

    Thread-safe; several processes may share a directory (SQLite and file
    locks arbitrate), though one writer per directory is the normal setup.
    """

    def __init__(
        self,
        directory: str | Path,
        catalog: Catalog | None = None,
        *,
        peer_id: str | None = None,
        cid_version: int = 0,
        verify_on_open: VerifyLevel | None = "latest",
        exclusive: bool = False,
        read_only: bool | None = False,
    ) -> None:
        if cid_version not in (0, 1):
            raise ValueError(f"cid_version must be 0 or 1, got {cid_version}")
        self.dir = Path(directory).expanduser()
        if read_only is None:
            read_only = self.dir.is_dir() and not is_writable(resolve_db_path(self.dir))
        self.read_only = read_only
        if not read_only:
            (self.dir / ROUNDS_DIR).mkdir(parents=True, exist_ok=True)
            (self.dir / TMP_DIR).mkdir(exist_ok=True)
        self._dir_lock = DataDirLock(self.dir).acquire() if exclusive else None
        try:
            self._owns_catalog = catalog is None
            if catalog is None:
                _refuse_lost_catalog(self.dir)
                catalog = Catalog.open(self.dir, read_only=read_only)
            self.catalog = catalog
        except BaseException:
            if self._dir_lock is not None:
                self._dir_lock.release()
            raise
        self.peer_id = peer_id
        self.cid_version = cid_version
        self._mutex = threading.RLock()
        self._lock_path = self.dir / LOCK_NAME
        self.last_reconcile: ReconcileReport | None = None
        if verify_on_open is not None:
            report = self.reconcile(verify=verify_on_open)
            # Problems with checkpoints are warnings; housekeeping is info.
            level = logging.WARNING if report.missing or report.corrupt else logging.INFO
            for line in report.lines():
                log.log(level, "checkpoint store %s: %s", self.dir, line)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Close the catalog if this store opened it; release the node lock. Safe twice."""
        if self._owns_catalog:
            self.catalog.close()
        if self._dir_lock is not None:
            self._dir_lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.dir)!r})"

    @contextmanager
    def _saving(self) -> Iterator[None]:
        """Shared store lock (many savers, excludes reconcile's temp cleanup) + thread mutex."""
        if self.read_only:
            raise CatalogError(
                f"the data directory {self.dir} is open read-only: nothing can be saved or "
                "deleted there"
            )
        with self._mutex:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                yield
            finally:
                os.close(fd)

    # -- writing -------------------------------------------------------------

    def save(
        self,
        round: int,
        arrays: Mapping[str, np.ndarray],
        metadata: Mapping[str, str] | None = None,
        *,
        replace: bool = False,
    ) -> CheckpointRecord:
        """Encode ``arrays`` (+ ``metadata``) and store them as ``round``'s checkpoint."""
        from fedstore import format as fmt
        from fedstore.ipld.cid import cid_of_bytes

        data = fmt.encode(arrays, metadata)
        cid = cid_of_bytes(data, cid_version=self.cid_version)
        return self._store(round, data, cid, replace=replace)

    def save_encoded(
        self, round: int, data: bytes, cid: str, *, replace: bool = False
    ) -> CheckpointRecord:
        """Store checkpoint bytes received from elsewhere under ``round``.

        The bytes are verified against ``cid`` first (IntegrityError, nothing
        written, if they do not match) and must be a valid checkpoint
        (FormatError otherwise).
        """
        from fedstore.ipld.cid import verify_bytes

        verify_bytes(cid, data)
        return self._store(round, data, cid, replace=replace)

    def _store(self, round: int, data: bytes, cid: str, *, replace: bool) -> CheckpointRecord:
        from fedstore.ipld.cid import parse_cid

        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        if round > MAX_ROUND:  # peers could never be told of it (and SQLite's INTEGER ends)
            raise ValueError(f"round must be at most {MAX_ROUND}, the highest peers accept")
        codec, raw_size = describe_checkpoint(data)  # also rejects bytes that are not a checkpoint
        rel = f"{ROUNDS_DIR}/{checkpoint_filename(round, cid)}"
        with self._saving():
            existing = self.catalog.get_checkpoint(round)
            if existing is not None and existing.cid != cid and not replace:
                raise RoundConflictError(
                    f"round {round} already has checkpoint {existing.cid} in {self.dir}; "
                    f"refusing to overwrite it with {cid} (delete the round first, or save "
                    "with replace=True / --replace)"
                )
            if (
                existing is not None
                and existing.cid == cid
                and existing.status == "ok"
                and self._file_size(existing.path) == existing.stored_size
            ):
                return existing  # idempotent: same bytes already stored
            self._atomic_write(rel, data)
            try:
                rec = self.catalog.add_checkpoint(
                    round,
                    cid,
                    cid_version=parse_cid(cid).version,
                    codec=codec,
                    raw_size=raw_size,
                    stored_size=len(data),
                    path=rel,
                    created_by=self.peer_id,
                    replace=replace,
                )
            except BaseException:
                if existing is None or existing.path != rel:
                    (self.dir / rel).unlink(missing_ok=True)
                raise
            if existing is not None and existing.path != rel:
                (self.dir / existing.path).unlink(missing_ok=True)
            log.info("stored round %d as %s (%d bytes)", round, cid, len(data))
            return rec

    def _file_size(self, rel: str) -> int | None:
        try:
            return (self.dir / rel).stat().st_size
        except FileNotFoundError:
            return None

    def _atomic_write(self, rel: str, data: bytes) -> None:
        final = self.dir / rel
        write_atomic(
            final,
            lambda f: f.write(data),
            tmp_dir=self.dir / TMP_DIR,
            prefix=f"{final.stem}.",
            suffix=".part",
        )
        fsync_dir(final.parent)

    def delete(self, round: int) -> CheckpointRecord:
        """Forget ``round`` and remove its file (row first, then file)."""
        with self._saving():
            rec = self.catalog.delete_checkpoint(round)
            if rec is None:
                raise CheckpointNotFoundError(f"no checkpoint for round {round} in {self.dir}")
            (self.dir / rec.path).unlink(missing_ok=True)
            return rec

    def prune(self, keep_last: int) -> list[CheckpointRecord]:
        """Delete all but the ``keep_last`` highest rounds; return what was deleted."""
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        with self._saving():
            rounds = self.catalog.list_rounds()
            doomed = rounds[: max(0, len(rounds) - keep_last)]
            deleted = []
            for r in doomed:
                rec = self.catalog.delete_checkpoint(r)
                if rec is not None:
                    (self.dir / rec.path).unlink(missing_ok=True)
                    deleted.append(rec)
            return deleted

    # -- reading -------------------------------------------------------------

    def latest(self) -> CheckpointRecord | None:
        """The newest ``ok`` checkpoint row, from the catalog."""
        return self.catalog.latest_checkpoint()

    def get(self, round: int) -> CheckpointRecord:
        """The row of ``round`` (CheckpointNotFoundError if none)."""
        rec = self.catalog.get_checkpoint(round) if 0 <= round <= MAX_ROUND else None
        if rec is None:
            raise CheckpointNotFoundError(f"no checkpoint for round {round} in {self.dir}")
        return rec

    def list_rounds(self) -> list[int]:
        """Rounds with a checkpoint row (any status), ascending."""
        return self.catalog.list_rounds()

    def list_checkpoints(self) -> list[CheckpointRecord]:
        """Every checkpoint row, ascending by round."""
        return self.catalog.list_checkpoints()

    def path_of(self, round: int) -> Path:
        """Absolute path of ``round``'s file (it may be missing if the row is flagged)."""
        return (self.dir / self.get(round).path).resolve()

    def _resolve(self, round: int | None) -> CheckpointRecord:
        if round is not None:
            return self.get(round)
        rec = self.catalog.latest_checkpoint()
        if rec is None:
            raise CheckpointNotFoundError(f"no checkpoints in {self.dir} yet")
        return rec

    def read_verified(self, round: int | None = None) -> tuple[CheckpointRecord, bytes]:
        """The row and the raw file bytes of ``round`` (latest ``ok`` when None), verified.

        A missing file flags the row ``missing`` and raises
        CheckpointNotFoundError; bytes that do not hash to the CID flag it
        ``corrupt`` and raise IntegrityError. A flagged row whose file is
        intact again is set back to ``ok``.
        """
        return self._read_verified(round, lambda path: path.read_bytes())

    def _read_verified(
        self, round: int | None, read: Callable[[Path], _Data]
    ) -> tuple[CheckpointRecord, _Data]:
        from fedstore.ipld.cid import verify_bytes

        rec = self._resolve(round)
        try:
            data = read(self.dir / rec.path)
        except FileNotFoundError:
            self._mark(rec, "missing")
            raise CheckpointNotFoundError(
                f"the file of round {rec.round} ({rec.path}) is missing from {self.dir}; "
                f"{self._flagged('missing')} (fetch CID {rec.cid} again, or delete the round)"
            ) from None
        try:
            verify_bytes(rec.cid, data if isinstance(data, bytes) else data.data)
        except IntegrityError as exc:
            self._mark(rec, "corrupt")
            raise IntegrityError(
                f"the file of round {rec.round} ({rec.path}) does not match its CID {rec.cid}; "
                f"{self._flagged('corrupt')} (fetch it again, or delete the round)"
            ) from exc
        if rec.status != "ok" and self._mark(rec, "ok"):
            rec = self.get(rec.round)
        return rec, data

    def _flagged(self, status: str) -> str:
        if self.read_only:
            return f"it is {status} (not flagged: the catalog is read-only)"
        return f"its catalog row is now flagged '{status}'"

    def _mark(self, rec: CheckpointRecord, status: str) -> bool:
        """Flag *rec*'s row (unless read-only); whether a row changed."""
        if self.read_only:
            return False
        return self.catalog.mark_checkpoint_status(rec.round, status, cid=rec.cid)

    def load(self, round: int | None = None, *, max_decoded_size: int | None = None) -> Checkpoint:
        """Decode the checkpoint of ``round`` (latest when None) after verifying its CID.

        The file is read once into a numpy buffer (cheaper to fill than a
        bytes object of the same size), hashed against the CID and decoded
        from that same buffer, so the bytes decoded are the bytes verified.
        """
        from fedstore import format as fmt

        _rec, data = self._read_verified(round, fmt.read_file)
        return fmt.decode(data, max_decoded_size=max_decoded_size)

    def reconcile(self, verify: VerifyLevel = "latest") -> ReconcileReport:
        """Reconcile catalog and disk (see :mod:`fedstore.store.reconcile`)."""
        report = reconcile(self.dir, self.catalog, self._lock_path, verify)
        self.last_reconcile = report
        return report

"""The local checkpoint store: atomic checkpoint files recorded in the catalog.

::

    store = LocalStore(resolve_data_dir(), peer_id=my_peer_id)  # --dir rule, see paths
    rec = store.save(5, {"fc.weight": w}, {"task": "digits"})   # -> CheckpointRecord
    ckpt = store.load()                                         # latest, CID-verified
    store.prune(keep_last=3)

Async code uses :class:`AsyncLocalStore` (same methods, awaited, in worker threads).
"""

from fedstore.catalog import CheckpointRecord, RoundConflictError
from fedstore.store.aio import AsyncLocalStore
from fedstore.store.local import LocalStore
from fedstore.store.paths import (
    CHECKPOINT_DIR_ENV,
    CHECKPOINT_SUFFIX,
    checkpoint_filename,
    default_checkpoint_dir,
    parse_checkpoint_filename,
    resolve_data_dir,
)
from fedstore.store.reconcile import ReconcileReport, VerifyLevel

__all__ = [
    "CHECKPOINT_DIR_ENV",
    "CHECKPOINT_SUFFIX",
    "AsyncLocalStore",
    "CheckpointRecord",
    "LocalStore",
    "ReconcileReport",
    "RoundConflictError",
    "VerifyLevel",
    "checkpoint_filename",
    "default_checkpoint_dir",
    "parse_checkpoint_filename",
    "resolve_data_dir",
]

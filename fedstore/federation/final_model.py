"""A finished federation's final model, read back from a node's own data directory.

After a run, :func:`local_head` says which checkpoint the node's catalog holds
as its latest (the demo checks it is the federation's final CID on every
peer), and :func:`export_model` writes that model as a plain weights file
(``.safetensors``, ``.npz`` or ``.fsck``) after verifying its bytes against
the CID. Both are blocking: call them from a worker thread in async code.
"""

from __future__ import annotations

from pathlib import Path

from fedstore.errors import ConfigError, IntegrityError

__all__ = ["export_model", "local_head"]


def local_head(data_dir: Path) -> tuple[int, str] | None:
    """``(round, cid)`` of the newest checkpoint in ``data_dir``'s catalog, or None."""
    from fedstore.catalog import Catalog, resolve_db_path

    if not resolve_db_path(data_dir).is_file():
        return None
    with Catalog.open(data_dir) as cat:
        rec = cat.latest_checkpoint()
    return None if rec is None else (rec.round, rec.cid)


def export_model(data_dir: Path, round: int, cid: str, out: Path) -> int:
    """Write round ``round``'s model (which must be ``cid``) from ``data_dir`` to ``out``.

    The file's format follows its extension (see
    :func:`fedstore.format.weight_files.save_weights_file`); a
    ``.safetensors`` file loads into PyTorch with ``safetensors.torch.load_file``.
    Returns the number of parameters written. ConfigError for an unwritable
    path, IntegrityError when the stored round is not ``cid``.
    """
    from fedstore import format as fmt
    from fedstore.format.weight_files import save_weights_file
    from fedstore.ipld import same_cid
    from fedstore.store import LocalStore

    if out.is_dir():
        raise ConfigError(f"cannot export to {out}: it is a directory (give a file name)")
    with LocalStore(data_dir) as store:
        rec, data = store.read_verified(round)
    if not same_cid(rec.cid, cid):
        raise IntegrityError(f"round {round} in {data_dir} is {rec.cid}, not the final {cid}")
    ckpt = fmt.decode(data)
    metadata = None if out.suffix.lower() == ".npz" else ckpt.metadata
    try:
        save_weights_file(out, ckpt.arrays, metadata=metadata)
    except OSError as exc:
        raise ConfigError(f"cannot export to {out}: {exc.strerror or exc}") from exc
    return ckpt.parameter_count

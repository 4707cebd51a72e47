"""Read and write plain weight files: ``.npz``, ``.safetensors`` and fedstore checkpoints.

::

    arrays = load_weights_file("model.npz")        # dict[str, np.ndarray]
    save_weights_file("model.safetensors", arrays)
    save_weights_file("model.fsck", arrays, metadata={"round": "0"})

Loading never unpickles: ``.npz`` goes through ``np.load(allow_pickle=False)``
(a pickle renamed to ``.npz`` is refused), ``.safetensors`` through the
safetensors library, and fedstore checkpoints (``.fsck``, or any file that
starts with the ``FSCK`` magic) through :func:`fedstore.format.decode`.
Sizes are checked against the same cap as checkpoint decoding
($FEDSTORE_MAX_CHECKPOINT_BYTES, default 8 GiB) before arrays are allocated.
Bad, corrupt or unsupported files raise :class:`~fedstore.errors.FormatError`
(:class:`~fedstore.errors.SizeLimitError` for the cap); OS errors such as a
missing file propagate as ``OSError``.

Writes are atomic: a temporary file in the target directory, fsync, rename.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np
import safetensors
import safetensors.numpy

from fedstore.errors import ConfigError, FormatError, SizeLimitError
from fedstore.format import MAGIC, decode, describe_foreign, encode
from fedstore.format.container import resolve_max_decoded_size
from fedstore.format.tensor_index import canonical_array, name_problem
from fedstore.fsutil import write_atomic

NPZ_SUFFIX = ".npz"
SAFETENSORS_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIX = ".fsck"
SUPPORTED_SUFFIXES = (NPZ_SUFFIX, SAFETENSORS_SUFFIX, CHECKPOINT_SUFFIX)

# Container and index overhead a checkpoint may add on top of its raw size.
_STORED_SLACK = 2 << 20
_NPZ_KINDS = frozenset("biufc")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def load_weights_file(
    path: str | os.PathLike[str], *, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Load the named arrays stored in *path* (.npz, .safetensors or a fedstore checkpoint).

    *max_bytes* caps the total array bytes (default: the checkpoint decode cap).
    Raises FormatError for unknown extensions, pickles, object arrays and
    corrupt files; SizeLimitError when the arrays would exceed the cap.
    """
    path = Path(path)
    cap = resolve_max_decoded_size(max_bytes)
    with path.open("rb") as fh:
        head = fh.read(16)
    suffix = path.suffix.lower()
    if head.startswith(MAGIC) or suffix == CHECKPOINT_SUFFIX:
        return _load_checkpoint(path, cap)
    if suffix == NPZ_SUFFIX:
        return _load_npz(path, head, cap)
    if suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path, cap)
    raise FormatError(
        f"{path}: unsupported weights file extension {path.suffix!r} (supported: "
        f"{', '.join(SUPPORTED_SUFFIXES)}); fedstore never loads pickled formats such as "
        ".pt, .pth or .pkl"
    )


def save_weights_file(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write *arrays* to *path* atomically, in the format named by its extension.

    ``.npz`` (uncompressed, no pickle), ``.safetensors`` (with optional str
    metadata) or ``.fsck`` (a fedstore checkpoint, see :func:`fedstore.format.encode`).
    Raises FormatError for an unknown extension, TypeError/ValueError for bad
    names, unsupported dtypes (object arrays...) or metadata on ``.npz``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: directory {path.parent} does not exist")
    if suffix not in SUPPORTED_SUFFIXES:
        raise FormatError(
            f"{path}: cannot save weights as {path.suffix!r} "
            f"(supported: {', '.join(SUPPORTED_SUFFIXES)})"
        )
    if suffix == CHECKPOINT_SUFFIX:
        blob = encode(arrays, metadata)
        write_atomic(path, lambda fh: fh.write(blob))
        return
    prepared = _prepare(arrays)
    if suffix == NPZ_SUFFIX:
        if metadata:
            raise ValueError(".npz files cannot hold metadata; use .safetensors or .fsck")
        write_atomic(path, lambda fh: _write_npz(fh, prepared))
        return
    meta = dict(metadata) if metadata else None
    if meta is not None and not all(isinstance(v, str) for v in meta.values()):
        raise TypeError("safetensors metadata values must be str")
    write_atomic(path, lambda fh: fh.write(safetensors.numpy.save(prepared, metadata=meta)))


def _prepare(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of str to numpy arrays, not {type(arrays)}")
    prepared: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        problem = name_problem(name)
        if problem is not None:
            raise (TypeError if not isinstance(name, str) else ValueError)(problem)
        prepared[name] = canonical_array(name, value)
    return prepared


def _write_npz(fh: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    # What np.savez does, minus its keyword clashes ("file", "allow_pickle"),
    # with allow_pickle=False and fixed timestamps so the bytes are reproducible.
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_EPOCH)
            with zf.open(info, mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _load_checkpoint(path: Path, cap: int) -> dict[str, np.ndarray]:
    size = path.stat().st_size
    if size > cap + cap // 256 + _STORED_SLACK:
        raise SizeLimitError(
            f"{path}: {size:,}-byte checkpoint is larger than the {cap:,} byte cap"
        )
    try:
        return decode(path.read_bytes(), max_decoded_size=cap).arrays
    except FormatError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def _load_npz(path: Path, head: bytes, cap: int) -> dict[str, np.ndarray]:
    if not head.startswith(b"PK"):
        raise FormatError(f"{path} is not a .npz (zip) archive: {describe_foreign(head)}")
    try:
        _check_npz_members(path, cap)
        result: dict[str, np.ndarray] = {}
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                result[key] = np.asarray(npz[key])
        return result
    except FormatError:
        raise
    except ValueError as exc:
        # np.load's refusals: pickled payloads, object arrays (allow_pickle=False).
        raise FormatError(f"{path}: refused: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise FormatError(f"{path} is not a readable .npz archive: {exc}") from exc


def _check_npz_members(path: Path, cap: int) -> None:
    """Read every member's .npy header (not its data) and check dtypes and total size."""
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise FormatError(f"{path}: unexpected member {info.filename!r} (not a .npy array)")
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise FormatError(f"{path}: {info.filename} uses .npy version {version}")
            if dtype.hasobject or dtype.kind not in _NPZ_KINDS:
                raise FormatError(
                    f"{path}: array {info.filename[:-4]!r} has dtype {dtype}; only bool, integer, "
                    "float and complex arrays are accepted (object arrays would need pickle)"
                )
            total += math.prod(shape) * dtype.itemsize
            if total > cap:
                raise SizeLimitError(f"{path}: arrays add up to more than the {cap:,} byte cap")


def _load_safetensors(path: Path, cap: int) -> dict[str, np.ndarray]:
    # Tensor bytes are the file minus its 8-byte length prefix and JSON header
    # (the library checks that the tensors cover exactly that range).
    size = path.stat().st_size
    with path.open("rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
    if 8 + header_len <= size and size - 8 - header_len > cap:
        raise SizeLimitError(
            f"{path}: {size - 8 - header_len:,} bytes of tensors, above the {cap:,} byte cap"
        )
    try:
        loaded = safetensors.numpy.load_file(path)
    except safetensors.SafetensorError as exc:
        raise FormatError(f"{path} is not a valid .safetensors file: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: unsupported tensor in .safetensors file: {exc!r}") from exc
    return {name: arr if arr.flags.writeable else arr.copy() for name, arr in loaded.items()}


__all__ = [
    "CHECKPOINT_SUFFIX",
    "NPZ_SUFFIX",
    "SAFETENSORS_SUFFIX",
    "SUPPORTED_SUFFIXES",
    "load_weights_file",
    "save_weights_file",
]

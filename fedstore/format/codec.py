"""encode / decode / inspect: the public checkpoint codec (see the package docstring)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from fedstore.errors import FormatError, SizeLimitError
from fedstore.format.container import (
    CODEC_NAMES,
    FLAG_SHUFFLE,
    FORMAT_VERSION,
    ContainerHeader,
    canonical_metadata,
    pack_header,
    parse_header,
    resolve_max_decoded_size,
)
from fedstore.format.parallel import resolve_threads
from fedstore.format.pieces import (
    BodyPlan,
    PieceRef,
    check_pieces,
    decode_tensors,
    read_index,
    scan_pieces,
    write_body,
)
from fedstore.format.shuffle import BLOCK_ELEMENTS, read_unshuffled
from fedstore.format.tensor_index import (
    MAX_INDEX_BYTES,
    MAX_TENSORS,
    TensorEntry,
    parse_index,
    plan,
)
from fedstore.format.zstd_frame import FrameReader, check_frame


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """Named arrays plus string metadata (round, model name, creating peer, parent CID...)."""

    arrays: dict[str, np.ndarray]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def parameter_count(self) -> int:
        """Total number of elements over all arrays."""
        return sum(int(a.size) for a in self.arrays.values())

    @property
    def nbytes(self) -> int:
        """Total bytes of array data."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    def encode(self) -> bytes:
        """Shorthand for ``encode(self.arrays, self.metadata)``."""
        return encode(self.arrays, self.metadata)


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype (numpy name, e.g. ``float32``), shape and byte size of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect` learns from a checkpoint without decoding its tensor data."""

    format_version: int
    codec: str
    flags: int
    stored_size: int
    raw_size: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]

    @property
    def shuffled(self) -> bool:
        return bool(self.flags & FLAG_SHUFFLE)

    @property
    def parameter_count(self) -> int:
        return sum(t.size for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def ratio(self) -> float:
        """Stored bytes divided by tensor bytes (lower is better)."""
        return self.stored_size / self.tensor_bytes if self.tensor_bytes else 0.0

    def check_decoded_size(self, max_decoded_size: int | None = None) -> None:
        """Raise SizeLimitError if :func:`decode` would refuse this checkpoint's size.

        Same cap and default as decode ($FEDSTORE_MAX_CHECKPOINT_BYTES, else
        8 GiB): lets a store refuse an oversized checkpoint when it is received,
        not when it is first loaded.
        """
        _check_cap(self.raw_size, resolve_max_decoded_size(max_decoded_size))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``--json`` CLI output)."""
        return {
            "format_version": self.format_version,
            "codec": self.codec,
            "flags": self.flags,
            "shuffled": self.shuffled,
            "stored_size": self.stored_size,
            "raw_size": self.raw_size,
            "tensor_bytes": self.tensor_bytes,
            "parameter_count": self.parameter_count,
            "metadata": dict(self.metadata),
            "tensors": [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes}
                for t in self.tensors
            ],
        }

    def __str__(self) -> str:
        lines = [
            f"fedstore checkpoint v{self.format_version}, {self.codec}"
            + (" + byte-shuffle" if self.shuffled else ""),
            f"stored {self.stored_size:,} bytes, raw {self.raw_size:,} bytes, "
            f"ratio {self.ratio:.3f} of tensor bytes",
            f"{len(self.tensors)} tensors, {self.parameter_count:,} parameters",
        ]
        lines += [f"  meta {key} = {value}" for key, value in sorted(self.metadata.items())]
        lines += [f"  {t.name}  {t.dtype}{list(t.shape)}  {t.nbytes:,} bytes" for t in self.tensors]
        return "\n".join(lines)


def encode(
    arrays: Mapping[str, np.ndarray | np.generic],
    metadata: Mapping[str, str] | None = None,
    *,
    shuffle: bool = True,
    threads: int | None = None,
) -> bytes:
    """Encode *arrays* and *metadata* into checkpoint bytes (format version 2).

    Deterministic: the same arrays (names, dtypes, shapes, values; byte order
    and memory layout do not matter) and metadata give the same bytes in any
    process and with any number of *threads* (default: see
    :mod:`fedstore.format.parallel`). Tensors with itemsize > 1 are
    byte-shuffled unless *shuffle* is False. Raises TypeError/ValueError for
    unsupported input (non-str metadata values, object or complex arrays,
    empty, NUL-containing or overlong names).
    """
    out = io.BytesIO()
    encode_to(out, arrays, metadata, shuffle=shuffle, threads=threads)
    return out.getvalue()  # hands over BytesIO's buffer: no copy


def encode_to(
    out: IO[bytes],
    arrays: Mapping[str, np.ndarray | np.generic],
    metadata: Mapping[str, str] | None = None,
    *,
    shuffle: bool = True,
    threads: int | None = None,
) -> int:
    """Write the checkpoint :func:`encode` returns to the binary stream *out*.

    Writes piece by piece, front to back (no seeking), so the encoding never
    exists in memory as a whole; returns the number of bytes written. Input
    is validated before the first byte is written.
    """
    metadata_json = canonical_metadata(metadata)
    entries, sources, index = plan(arrays)
    do_shuffle = shuffle and any(e.dtype.itemsize > 1 for e in entries)
    body = BodyPlan(entries, sources, index, do_shuffle)
    workers = resolve_threads(threads)
    header = pack_header(
        flags=FLAG_SHUFFLE if do_shuffle else 0,
        raw_size=len(index) + (entries[-1].end if entries else 0),
        body_field=body.pieces,
        metadata_json=metadata_json,
    )
    out.write(header)
    return len(header) + write_body(out, body, workers)


def decode(
    data: bytes | bytearray | memoryview | np.ndarray,
    *,
    max_decoded_size: int | None = None,
    threads: int | None = None,
) -> Checkpoint:
    """Decode checkpoint bytes (format version 1 or 2) into fresh, writable arrays.

    *max_decoded_size* caps the decompressed size (default:
    $FEDSTORE_MAX_CHECKPOINT_BYTES, else 8 GiB); a larger declared size raises
    SizeLimitError before anything is decompressed. Any other problem (wrong
    magic, unsupported version, unknown flags, truncation, sizes that do not
    agree, corrupt zstd data, malformed safetensors index) raises FormatError.
    Nothing is ever unpickled. *threads*: as for :func:`encode`.
    """
    cap = resolve_max_decoded_size(max_decoded_size)
    view = _byte_view(data)
    header = parse_header(view)
    _check_cap(header.raw_size, cap)
    shuffled = bool(header.flags & FLAG_SHUFFLE)
    if header.version == 1:
        arrays = _decode_v1(view, header, shuffled)
    else:
        body, refs, entries = _open_pieces(view, header)
        arrays = decode_tensors(body, refs, entries, shuffled, resolve_threads(threads))
    return Checkpoint(arrays=dict(sorted(arrays.items())), metadata=header.metadata)


def decode_file(
    path: str | os.PathLike[str],
    *,
    max_decoded_size: int | None = None,
    threads: int | None = None,
) -> Checkpoint:
    """:func:`decode` the checkpoint file at *path* (read into one reusable-size buffer).

    The cap is checked from the header before the rest of the file is read.
    The file is trusted as far as its bytes go: verify its CID first if it
    came from elsewhere.
    """
    return decode(read_file(path), max_decoded_size=max_decoded_size, threads=threads)


def read_file(path: str | os.PathLike[str]) -> np.ndarray:
    """The bytes of the file at *path* as a writable uint8 array (one readinto, no copy).

    The memory is a plain ``bytearray`` (ordinary pages): a numpy allocation
    of this size would ask for transparent huge pages, and on a loaded
    machine the kernel's compaction for those stalled reads of 100 MB for
    over a second. Raises OSError as ``open`` does, and FormatError if the
    file changes size while it is read.
    """
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = bytearray(size)
        view = memoryview(buf)
        filled = 0
        while filled < size:
            got = fh.readinto(view[filled:])
            if not got:
                break
            filled += got
        if filled != size or fh.read(1):
            raise FormatError(f"{os.fspath(path)} changed size while it was read")
    return np.frombuffer(buf, dtype=np.uint8)


def inspect(data: bytes | bytearray | memoryview | np.ndarray) -> CheckpointInfo:
    """Describe checkpoint bytes without decompressing the tensor data.

    Validates the header, the body's layout (version 1: the zstd frame's
    blocks; version 2: every piece's size and frame header) and the tensor
    index, decompressing only the index. Raises FormatError like
    :func:`decode` but does not apply the decode size cap: call
    :meth:`CheckpointInfo.check_decoded_size` on the result for that.
    """
    view = _byte_view(data)
    header = parse_header(view)
    if header.version == 1:
        reader, entries = _open_payload(view, header)
        reader.close()
    else:
        _, _, entries = _open_pieces(view, header)
    tensors = tuple(
        TensorInfo(name=e.name, dtype=str(e.dtype), shape=e.shape, nbytes=e.nbytes)
        for e in sorted(entries, key=lambda e: e.name)
    )
    return CheckpointInfo(
        format_version=header.version,
        codec=CODEC_NAMES[header.codec],
        flags=header.flags,
        stored_size=len(view),
        raw_size=header.raw_size,
        tensors=tensors,
        metadata=header.metadata,
    )


def _check_cap(raw_size: int, cap: int) -> None:
    if raw_size > cap:
        raise SizeLimitError(
            f"checkpoint would decode to {raw_size:,} bytes, above the limit of "
            f"{cap:,} (raise it with max_decoded_size= or FEDSTORE_MAX_CHECKPOINT_BYTES)"
        )


def _byte_view(data: bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError("checkpoint data as an array must be a 1-D uint8 array")
        return data.data.cast("B")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"checkpoint data must be bytes-like, not {type(data).__name__}")
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _open_pieces(
    view: memoryview, header: ContainerHeader
) -> tuple[memoryview, list[PieceRef], list[TensorEntry]]:
    """Version 2: walk the pieces, read the index, check every piece against it."""
    body = view[header.body_offset :]
    count = header.body_field
    # each piece is at least its header; and no index yields more pieces than this
    most = 1 + 8 * MAX_TENSORS + 8 * (header.raw_size // BLOCK_ELEMENTS + 1)
    if count > most:
        raise FormatError(f"checkpoint declares {count} pieces (at most {most} possible)")
    refs = scan_pieces(body, count)
    entries = read_index(body, refs, header.raw_size)
    shuffled = bool(header.flags & FLAG_SHUFFLE)
    check_pieces(body, refs, entries, shuffled)
    return body, refs, entries


def _decode_v1(view: memoryview, header: ContainerHeader, shuffled: bool) -> dict[str, np.ndarray]:
    """Version 1: one zstd frame holding the whole payload, read as a stream."""
    arrays: dict[str, np.ndarray] = {}
    reader, entries = _open_payload(view, header)
    with reader:
        for entry in entries:
            out = np.empty(entry.shape, dtype=entry.dtype)
            if shuffled and entry.dtype.itemsize > 1:
                read_unshuffled(reader.readinto_exact, out)
            else:
                raw = out.reshape(-1).view(np.uint8)
                reader.readinto_exact(raw)
                if entry.dtype.kind == "b" and raw.size and int(raw.max()) > 1:
                    raise FormatError(
                        f"tensor {entry.name!r} is bool but holds bytes other than 0 and 1"
                    )
            arrays[entry.name] = out
        reader.finish()
    return arrays


def _open_payload(
    view: memoryview, header: ContainerHeader
) -> tuple[FrameReader, list[TensorEntry]]:
    """Version 1: check the frame, then read and validate the safetensors index at its start."""
    frame = view[header.body_offset :]
    check_frame(frame, header.raw_size)
    reader = FrameReader(frame)
    try:
        index_len = int.from_bytes(reader.read_exact(8), "little")
        if index_len > min(header.raw_size - 8, MAX_INDEX_BYTES):
            raise FormatError(
                f"safetensors header length {index_len} is beyond the data "
                f"({header.raw_size - 8} bytes follow it; limit {MAX_INDEX_BYTES})"
            )
        index = reader.read_exact(index_len)
        if not index.startswith(b"{"):
            raise FormatError("safetensors header does not start with '{'")
        entries = parse_index(index, header.raw_size - 8 - index_len)
    except BaseException:
        reader.close()
        raise
    return reader, entries


__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointInfo",
    "TensorInfo",
    "decode",
    "decode_file",
    "encode",
    "encode_to",
    "inspect",
    "read_file",
]

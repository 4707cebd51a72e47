"""Format version 2's body: the payload cut at fixed points into pieces, each raw or zstd.

The payload is the same byte-shuffled safetensors stream as in version 1
(see :mod:`fedstore.format.tensor_index` and :mod:`fedstore.format.shuffle`),
cut into pieces at points that depend only on the tensor index:

* piece 0: the safetensors header (u64 length N, then N bytes of JSON);
* then, tensor by tensor in data order (empty tensors have no piece):
  a shuffled tensor (flag SHUFFLE, itemsize > 1) gives one piece per byte
  plane of each block of BLOCK_ELEMENTS elements (block by block, plane 0
  first), so a float32 block of m elements is 4 pieces of m bytes; any other
  tensor is cut into pieces of CHUNK_BYTES bytes (the last one shorter).

Every piece is stored as a 5-byte header (u8 method, u32 little-endian
stored size) and then either its raw bytes (method 0) or one zstd frame of
them (method 1) with content size and checksum, written with the fixed
parameters of :mod:`fedstore.format.zstd_frame`. The encoder tries zstd
only on pieces a fixed sample says could shrink (the low mantissa planes of
float weights are noise, and zstd spent two thirds of version 1's time on
them), and keeps the frame only if it is smaller than the raw bytes. Both
choices depend on the piece's bytes alone, so the output is deterministic;
pieces are independent, so worker threads (:mod:`fedstore.format.parallel`)
encode and decode them in any number without changing a byte.

Decoding first walks the piece headers (O(pieces), nothing decompressed),
then checks every piece against the size the index gives it (a zstd frame
must declare exactly that content size) before any tensor data is touched;
nothing ever decompresses past a piece's known size.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
import zstandard

from fedstore.errors import FormatError
from fedstore.format.parallel import ordered_map
from fedstore.format.shuffle import BLOCK_ELEMENTS, CACHE_ELEMENTS
from fedstore.format.tensor_index import MAX_INDEX_BYTES, TensorEntry, parse_index
from fedstore.format.zstd_frame import MAX_WINDOW_SIZE, compression_parameters

__all__ = [
    "CHUNK_BYTES",
    "METHOD_RAW",
    "METHOD_ZSTD",
    "PIECE_HEADER",
    "BodyPlan",
    "PieceRef",
    "decode_tensors",
    "piece_count",
    "read_index",
    "scan_pieces",
    "write_body",
]

PIECE_HEADER = struct.Struct("<BI")
METHOD_RAW = 0
METHOD_ZSTD = 1
#: Unshuffled tensor data is cut into pieces of this many bytes.
CHUNK_BYTES = 1 << 20
#: Bytes sampled (evenly spaced) to decide whether zstd is worth trying.
SAMPLE_SIZE = 4096
#: Pieces up to this size are always tried with zstd (trying is cheaper than sampling).
ALWAYS_TRY = 16 * 1024
#: zstd is tried when the sample's collision count says the bytes carry at
#: most 7.5 bits of (Renyi) entropy per byte: sum(count^2) * 2**7.5 >= n^2,
#: in integers (181 ~ 2**7.5). Uniform noise gives ~0.75, float32 exponent
#: planes ~35, the sign/low-exponent plane ~0.78.
_COLLISION_FACTOR = 181
#: Most bytes a piece can hold, whatever a header claims.
MAX_PIECE_BYTES = max(CHUNK_BYTES, BLOCK_ELEMENTS, 8 + MAX_INDEX_BYTES)

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(compression_params=compression_parameters())
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
    return dctx


# --------------------------------------------------------------------------- layout


def _pieces_of(entry: TensorEntry, shuffled: bool) -> int:
    if entry.nbytes == 0:
        return 0
    itemsize = entry.dtype.itemsize
    if shuffled and itemsize > 1:
        return -(-entry.size // BLOCK_ELEMENTS) * itemsize
    return -(-entry.nbytes // CHUNK_BYTES)


def piece_count(entries: list[TensorEntry], shuffled: bool) -> int:
    """Number of pieces of a body: 1 for the index plus each tensor's pieces."""
    return 1 + sum(_pieces_of(e, shuffled) for e in entries)


@dataclass(frozen=True, slots=True)
class _Task:
    """One unit of work: a block of a shuffled tensor (all its planes) or one plain chunk."""

    tensor: int
    start: int  # element (shuffled) or byte (plain) offset in the tensor
    stop: int
    first_piece: int
    shuffled: bool


def _tasks(entries: list[TensorEntry], shuffled: bool) -> Iterator[_Task]:
    piece = 1
    for i, entry in enumerate(entries):
        if entry.nbytes == 0:
            continue
        if shuffled and entry.dtype.itemsize > 1:
            itemsize = entry.dtype.itemsize
            for start in range(0, entry.size, BLOCK_ELEMENTS):
                yield _Task(i, start, min(entry.size, start + BLOCK_ELEMENTS), piece, True)
                piece += itemsize
        else:
            for start in range(0, entry.nbytes, CHUNK_BYTES):
                yield _Task(i, start, min(entry.nbytes, start + CHUNK_BYTES), piece, False)
                piece += 1


# --------------------------------------------------------------------------- encoding


def _worth_trying(piece: np.ndarray) -> bool:
    """Whether zstd could shrink *piece* (uint8 vector), judged from a fixed sample."""
    n = piece.size
    if n <= ALWAYS_TRY:
        return True
    step = n // SAMPLE_SIZE
    counts = np.bincount(piece[: step * SAMPLE_SIZE : step], minlength=256).astype(np.int64)
    return int(counts @ counts) * _COLLISION_FACTOR >= SAMPLE_SIZE * SAMPLE_SIZE


def _encode_piece(piece: np.ndarray) -> tuple[int, bytes | memoryview]:
    if _worth_trying(piece):
        frame = _compressor().compress(piece.data)
        if len(frame) < piece.size:
            return METHOD_ZSTD, frame
    return METHOD_RAW, piece.data


def _to_planes(elements: np.ndarray, planes: np.ndarray) -> None:
    """elements: (m, s) uint8 view; planes: (s, m) uint8 destination."""
    m, itemsize = elements.shape
    for start in range(0, m, CACHE_ELEMENTS):
        chunk = elements[start : start + CACHE_ELEMENTS]
        for k in range(itemsize):
            planes[k, start : start + CACHE_ELEMENTS] = chunk[:, k]


@dataclass(frozen=True)
class BodyPlan:
    """What :func:`write_body` needs: the entries, their arrays, the index bytes."""

    entries: list[TensorEntry]
    sources: list[np.ndarray]
    index: bytes
    shuffled: bool

    @property
    def pieces(self) -> int:
        return piece_count(self.entries, self.shuffled)


def write_body(out: IO[bytes], plan: BodyPlan, threads: int) -> int:
    """Write every piece of *plan* to *out*; return the bytes written."""
    written = _write_piece(out, *_encode_piece(np.frombuffer(plan.index, np.uint8)))

    def encode_task(task: _Task) -> list[tuple[int, bytes | memoryview]]:
        source = plan.sources[task.tensor].reshape(-1)
        if not task.shuffled:
            return [_encode_piece(source.view(np.uint8)[task.start : task.stop])]
        itemsize = source.dtype.itemsize
        m = task.stop - task.start
        elements = source[task.start : task.stop].view(np.uint8).reshape(m, itemsize)
        planes = np.empty((itemsize, m), dtype=np.uint8)
        _to_planes(elements, planes)
        return [_encode_piece(planes[k]) for k in range(itemsize)]

    for pieces in ordered_map(encode_task, _tasks(plan.entries, plan.shuffled), threads):
        for method, data in pieces:
            written += _write_piece(out, method, data)
    return written


def _write_piece(out: IO[bytes], method: int, data: bytes | memoryview) -> int:
    size = len(data) if isinstance(data, bytes) else data.nbytes
    out.write(PIECE_HEADER.pack(method, size))
    out.write(data)
    return PIECE_HEADER.size + size


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class PieceRef:
    """Where one stored piece is in the body: method, offset of its data, stored size."""

    method: int
    offset: int
    size: int


def scan_pieces(body: memoryview, count: int) -> list[PieceRef]:
    """Walk the piece headers of *body*; it must hold exactly *count* pieces.

    Raises FormatError for an unknown method, a piece running past the end,
    or bytes after the last piece. Nothing is decompressed.
    """
    end = len(body)
    if count < 1 or count * PIECE_HEADER.size > end:
        raise FormatError(f"checkpoint declares {count} pieces, impossible in a {end}-byte body")
    refs: list[PieceRef] = []
    pos = 0
    unpack = PIECE_HEADER.unpack_from
    for i in range(count):
        if pos + PIECE_HEADER.size > end:
            raise FormatError(f"checkpoint is truncated: piece {i} of {count} has no header")
        method, size = unpack(body, pos)
        pos += PIECE_HEADER.size
        if method not in (METHOD_RAW, METHOD_ZSTD):
            raise FormatError(f"checkpoint piece {i} has unknown storage method {method}")
        if size > MAX_PIECE_BYTES:
            raise FormatError(f"checkpoint piece {i} claims {size} bytes (limit {MAX_PIECE_BYTES})")
        if pos + size > end:
            raise FormatError(
                f"checkpoint is truncated: piece {i} needs {size} bytes, {end - pos} are left"
            )
        refs.append(PieceRef(method, pos, size))
        pos += size
    if pos != end:
        raise FormatError(
            f"checkpoint has {end - pos} unexpected trailing bytes after its last piece"
        )
    return refs


def _check_frame(frame: memoryview, index: int, want: int | None, most: int) -> int:
    """Validate a piece's zstd frame header; return its content size.

    *want* is the exact content size required (None: any size up to *most*).
    """
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise FormatError(f"checkpoint piece {index}: invalid zstd frame header: {exc}") from exc
    size = params.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN:
        raise FormatError(f"checkpoint piece {index}: zstd frame does not declare its size")
    if (want is not None and size != want) or size > most:
        expected = want if want is not None else f"at most {most}"
        raise FormatError(
            f"checkpoint piece {index}: zstd frame declares {size} bytes, expected {expected}"
        )
    if params.dict_id != 0:
        raise FormatError(f"checkpoint piece {index}: zstd frame needs a dictionary")
    if not params.has_checksum:
        raise FormatError(f"checkpoint piece {index}: zstd frame has no checksum")
    if params.window_size > MAX_WINDOW_SIZE:
        raise FormatError(
            f"checkpoint piece {index}: zstd frame asks for a {params.window_size}-byte window"
        )
    return int(size)


def _piece_bytes(body: memoryview, ref: PieceRef, index: int, size: int) -> np.ndarray:
    """The raw bytes of a checked piece as a uint8 vector (a view for raw pieces)."""
    data = body[ref.offset : ref.offset + ref.size]
    if ref.method == METHOD_RAW:
        return np.frombuffer(data, dtype=np.uint8)
    try:
        raw = _decompressor().decompress(data, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise FormatError(f"checkpoint piece {index}: corrupt zstd frame: {exc}") from exc
    if len(raw) != size:
        raise FormatError(f"checkpoint piece {index}: decompressed to {len(raw)} bytes, not {size}")
    return np.frombuffer(raw, dtype=np.uint8)


def read_index(body: memoryview, refs: list[PieceRef], raw_size: int) -> list[TensorEntry]:
    """Decode and validate piece 0 (the safetensors header); return the entries."""
    ref = refs[0]
    most = min(raw_size, 8 + MAX_INDEX_BYTES)
    if ref.method == METHOD_ZSTD:
        size = _check_frame(body[ref.offset : ref.offset + ref.size], 0, None, most)
    else:
        size = ref.size
    if not 8 <= size <= most:
        raise FormatError(f"checkpoint index piece holds {size} bytes (8 to {most} allowed)")
    raw = _piece_bytes(body, ref, 0, size).tobytes()
    index_len = int.from_bytes(raw[:8], "little")
    if index_len != size - 8:
        raise FormatError(
            f"safetensors header length {index_len} does not match its piece ({size - 8} bytes)"
        )
    if not raw[8:9] == b"{":
        raise FormatError("safetensors header does not start with '{'")
    return parse_index(raw[8:], raw_size - size)


def _expected_sizes(entries: list[TensorEntry], shuffled: bool) -> Iterator[int]:
    for entry in entries:
        if entry.nbytes == 0:
            continue
        if shuffled and entry.dtype.itemsize > 1:
            for start in range(0, entry.size, BLOCK_ELEMENTS):
                m = min(entry.size, start + BLOCK_ELEMENTS) - start
                yield from [m] * entry.dtype.itemsize
        else:
            for start in range(0, entry.nbytes, CHUNK_BYTES):
                yield min(entry.nbytes, start + CHUNK_BYTES) - start


def check_pieces(
    body: memoryview, refs: list[PieceRef], entries: list[TensorEntry], shuffled: bool
) -> None:
    """Check that every data piece has the size the index gives it (frames: declared size)."""
    expected = list(_expected_sizes(entries, shuffled))
    if len(expected) != len(refs) - 1:
        raise FormatError(
            f"checkpoint holds {len(refs) - 1} data pieces, its tensors need {len(expected)}"
        )
    for i, (ref, size) in enumerate(zip(refs[1:], expected, strict=True), start=1):
        if ref.method == METHOD_RAW:
            if ref.size != size:
                raise FormatError(
                    f"checkpoint piece {i} holds {ref.size} raw bytes, its tensor needs {size}"
                )
        else:
            _check_frame(body[ref.offset : ref.offset + ref.size], i, size, size)


_ALIGN = 64


def _arena(entries: list[TensorEntry]) -> list[np.ndarray]:
    total = sum(-(-e.nbytes // _ALIGN) * _ALIGN for e in entries)
    arena = np.empty(total, dtype=np.uint8)
    outputs = []
    offset = 0
    for e in entries:
        if e.nbytes == 0:
            outputs.append(np.empty(e.shape, dtype=e.dtype))
            continue
        outputs.append(arena[offset : offset + e.nbytes].view(e.dtype).reshape(e.shape))
        offset += -(-e.nbytes // _ALIGN) * _ALIGN
    return outputs


def decode_tensors(
    body: memoryview,
    refs: list[PieceRef],
    entries: list[TensorEntry],
    shuffled: bool,
    threads: int,
) -> dict[str, np.ndarray]:
    """Fill fresh arrays for *entries* from checked pieces (see :func:`check_pieces`).

    The arrays are views into one new allocation (each 64-byte aligned):
    numpy gives a large allocation transparent huge pages where the kernel
    allows it, which makes the first write to 100 MB of output several times
    cheaper than a separate allocation per tensor. Keeping one array alive
    keeps that whole allocation.
    """
    outputs = _arena(entries)

    def decode_task(task: _Task) -> None:
        out = outputs[task.tensor].reshape(-1)
        if not task.shuffled:
            ref = refs[task.first_piece]
            data = _piece_bytes(body, ref, task.first_piece, task.stop - task.start)
            out.view(np.uint8)[task.start : task.stop] = data
            return
        itemsize = out.dtype.itemsize
        m = task.stop - task.start
        planes = [
            _piece_bytes(body, refs[task.first_piece + k], task.first_piece + k, m)
            for k in range(itemsize)
        ]
        elements = out[task.start : task.stop].view(np.uint8).reshape(m, itemsize)
        for start in range(0, m, CACHE_ELEMENTS):
            chunk = elements[start : start + CACHE_ELEMENTS]
            for k in range(itemsize):
                chunk[:, k] = planes[k][start : start + CACHE_ELEMENTS]

    for _ in ordered_map(decode_task, _tasks(entries, shuffled), threads):
        pass
    arrays: dict[str, np.ndarray] = {}
    for entry, out in zip(entries, outputs, strict=True):
        if entry.dtype.kind == "b" and out.size and int(out.view(np.uint8).max()) > 1:
            raise FormatError(f"tensor {entry.name!r} is bool but holds bytes other than 0 and 1")
        arrays[entry.name] = out
    return arrays

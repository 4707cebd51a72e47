"""The zstd layer: fixed compression parameters, frame checks, a bounded reader.

Compression is deliberately deterministic: explicit parameters (ZSTD_PARAMS),
content size written, checksum written, no dictionary, single-threaded
(``threads=0``). zstd's multi-threaded mode would also be deterministic (its
frames are the same for any worker count) but writes different frames from
single-threaded mode, and measured no faster on a busy two-core machine. The
frame then only depends on the chunks fed in and the libzstd version bundled
with the ``zstandard`` package.

Before anything is decompressed, :func:`check_frame` walks the frame's block
headers (O(blocks), no decompression) to prove the frame is exactly as long
as the container says, declares the expected content size and carries a
checksum. :class:`FrameReader` then decompresses only as much as it is asked
for, so a frame can never make fedstore allocate more than the declared size.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable

import numpy as np
import zstandard

from fedstore.errors import FormatError

# Explicit parameters (a level's presets vary with the input size and the
# libzstd version). "fast" with the smallest hash table zstd allows: byte-
# shuffled float weights owe their ratio to entropy-coded literals (the
# sign/exponent planes), not to matches, so searching less is both faster and
# no worse (100 MB of N(0, 0.05) float32: 0.835 of raw at ~110 ms of zstd CPU,
# level 1 0.843 at ~150 ms, level 3 0.854). target_length must stay 0: above 0
# the fast strategy stops Huffman-coding literals (ratio 1.0).
ZSTD_PARAMS: dict[str, int] = {
    "strategy": zstandard.STRATEGY_FAST,
    "window_log": 19,
    "hash_log": 6,
    "chain_log": 13,
    "search_log": 1,
    "min_match": 7,
    "target_length": 0,
}
MAX_WINDOW_SIZE = 1 << 27
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_BLOCK_SIZE = 128 * 1024
_WRITE_SIZE = 1 << 20


def compression_parameters() -> zstandard.ZstdCompressionParameters:
    """The fixed, deterministic parameters every checkpoint frame is written with."""
    return zstandard.ZstdCompressionParameters(
        **ZSTD_PARAMS,
        write_content_size=1,
        write_checksum=1,
        write_dict_id=0,
        threads=0,
    )


def compress_after_prefix(
    chunks: Iterable[bytes | memoryview],
    raw_size: int,
    prefix_size: int,
    make_prefix: Callable[[int], bytes],
) -> bytes:
    """Return ``make_prefix(frame_size) + frame`` where the frame compresses *chunks*.

    *chunks* must add up to exactly *raw_size* bytes; each is consumed before
    the next is requested, so a producer may reuse one scratch buffer. The
    frame is streamed into the result behind a placeholder prefix that is
    filled in once the frame size is known, so the output (about the size of
    the model) is never copied, and the input never exists as one buffer.
    Deterministic: the frame depends only on the chunk sequence (which the
    caller derives from its input alone), the parameters and libzstd.
    """
    out = io.BytesIO()
    out.write(bytes(prefix_size))
    cctx = zstandard.ZstdCompressor(compression_params=compression_parameters())
    fed = 0
    with cctx.stream_writer(out, size=raw_size, write_size=_WRITE_SIZE, closefd=False) as writer:
        for chunk in chunks:
            writer.write(chunk)
            fed += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
        if fed != raw_size:
            raise AssertionError(f"fed {fed} bytes to zstd, {raw_size} were declared")
    prefix = make_prefix(out.tell() - prefix_size)
    if len(prefix) != prefix_size:
        raise AssertionError(f"prefix is {len(prefix)} bytes, {prefix_size} were reserved")
    out.seek(0)
    out.write(prefix)
    return out.getvalue()


def check_frame(frame: memoryview, raw_size: int) -> None:
    """Validate the zstd frame *frame* without decompressing it.

    Raises FormatError unless *frame* is exactly one zstd frame with a
    checksum, no dictionary, a declared content size equal to *raw_size*, and
    block headers whose lengths add up to exactly ``len(frame)``.
    """
    size = len(frame)
    if bytes(frame[:4]) != _ZSTD_MAGIC:
        raise FormatError("checkpoint payload is not a zstd frame (bad zstd magic)")
    try:
        header_size = zstandard.frame_header_size(frame)
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise FormatError(f"checkpoint zstd frame header is invalid or truncated: {exc}") from exc
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise FormatError("checkpoint zstd frame does not declare its content size")
    if params.content_size != raw_size:
        raise FormatError(
            f"header lies about sizes: the fedstore header declares {raw_size} raw bytes but "
            f"the zstd frame declares {params.content_size}"
        )
    if params.dict_id != 0:
        raise FormatError("checkpoint zstd frame needs a dictionary; fedstore never uses one")
    if not params.has_checksum:
        raise FormatError("checkpoint zstd frame has no checksum; fedstore always writes one")
    if params.window_size > MAX_WINDOW_SIZE:
        raise FormatError(
            f"checkpoint zstd frame asks for a {params.window_size}-byte window "
            f"(limit {MAX_WINDOW_SIZE})"
        )
    # Legitimate frames have ~128 KiB blocks; cap the count so a hostile frame
    # of millions of empty blocks cannot keep this loop busy.
    max_blocks = raw_size // 1024 + 1024
    pos = header_size
    blocks = 0
    while True:
        if pos + 3 > size:
            raise FormatError(f"checkpoint zstd frame is truncated at byte {pos} of {size}")
        header = int.from_bytes(frame[pos : pos + 3], "little")
        pos += 3
        block_type = (header >> 1) & 3
        block_size = header >> 3
        if block_type == 3:
            raise FormatError(f"checkpoint zstd frame has a reserved block type at byte {pos - 3}")
        if block_size > _MAX_BLOCK_SIZE:
            raise FormatError(f"checkpoint zstd frame has an oversized block at byte {pos - 3}")
        pos += 1 if block_type == 1 else block_size
        blocks += 1
        if blocks > max_blocks:
            raise FormatError(
                f"checkpoint zstd frame has more than {max_blocks} blocks for {raw_size} bytes"
            )
        if header & 1:
            break
    pos += 4  # checksum
    if pos > size:
        raise FormatError(f"checkpoint zstd frame is truncated: needs {pos} bytes, has {size}")
    if pos < size:
        raise FormatError(
            f"checkpoint zstd frame ends at byte {pos} but the header declares {size} bytes"
        )


class FrameReader:
    """Decompresses a checked frame on demand, never past what the caller asks for."""

    def __init__(self, frame: memoryview) -> None:
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        self._reader = dctx.stream_reader(frame, read_across_frames=False)
        self.position = 0

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the decompressor and the reference to the frame."""
        self._reader.close()  # type: ignore[no-untyped-call]

    def readinto_exact(self, buf: np.ndarray) -> None:
        """Fill the uint8 vector *buf* completely, or raise FormatError."""
        view = buf.data.cast("B")
        filled = 0
        want = len(view)
        while filled < want:
            try:
                got = self._reader.readinto(view[filled:])
            except zstandard.ZstdError as exc:
                raise FormatError(f"checkpoint zstd frame is corrupt: {exc}") from exc
            if got == 0:
                raise FormatError(
                    f"checkpoint zstd frame ended after {self.position + filled} bytes, "
                    "before the data it declares"
                )
            filled += got
        self.position += filled

    def read_exact(self, n: int) -> bytes:
        """Return exactly *n* decompressed bytes, or raise FormatError."""
        buf = np.empty(n, dtype=np.uint8)
        self.readinto_exact(buf)
        return buf.tobytes()

    def finish(self) -> None:
        """Require the frame to end here; this also verifies its checksum."""
        try:
            extra = self._reader.read(1)
        except zstandard.ZstdError as exc:
            raise FormatError(f"checkpoint zstd frame is corrupt: {exc}") from exc
        if extra:
            raise FormatError("checkpoint zstd frame holds more data than its tensors use")

"""The zstd layer: fixed compression parameters, frame checks, a bounded reader.

Compression is deliberately deterministic: level ZSTD_LEVEL, single-threaded
(``threads=0``; multi-threaded zstd output depends on the thread count),
content size written, checksum written, no dictionary. The output then only
depends on the input bytes and the libzstd version bundled with the
``zstandard`` package.

Before anything is decompressed, :func:`check_frame` walks the frame's block
headers (O(blocks), no decompression) to prove the frame is exactly as long
as the container says, declares the expected content size and carries a
checksum. :class:`FrameReader` then decompresses only as much as it is asked
for, so a frame can never make fedstore allocate more than the declared size.
"""

from __future__ import annotations

import numpy as np
import zstandard

from fedstore.errors import FormatError

ZSTD_LEVEL = 1
MAX_WINDOW_SIZE = 1 << 27
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_BLOCK_SIZE = 128 * 1024


def compress(payload: np.ndarray) -> bytes:
    """Compress the uint8 vector *payload* into one deterministic zstd frame."""
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL,
        source_size=payload.nbytes,
        write_content_size=1,
        write_checksum=1,
        write_dict_id=0,
        threads=0,
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(payload.data)


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

"""Format version 2: determinism across threads and processes, v1 still read, hostile pieces."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zstandard

from fedstore.errors import ConfigError, FormatError
from fedstore.format import FORMAT_VERSION, decode, encode, inspect
from fedstore.format.codec import decode_file, encode_to, read_file
from fedstore.format.container import FIXED, FIXED_HEADER_SIZE
from fedstore.format.parallel import THREADS_ENV, resolve_threads
from fedstore.format.pieces import METHOD_RAW, METHOD_ZSTD, PIECE_HEADER, scan_pieces
from fedstore.format.shuffle import BLOCK_ELEMENTS

V1_SAMPLE = pathlib.Path(__file__).parent / "data" / "checkpoint_v1.fsck"


def v1_sample_arrays() -> dict[str, np.ndarray]:
    """What tests/data/checkpoint_v1.fsck holds (it was encoded from exactly these)."""
    rng = np.random.default_rng(2024)
    return {
        "dense.w": rng.normal(0, 0.05, (48, 32)).astype(np.float32),
        "dense.b": np.arange(32, dtype=np.float32) / 7,
        "ids": np.arange(8, dtype=np.int64),
        "half": np.linspace(-1, 1, 10).astype(np.float16),
        "mask": np.array([True, False, True]),
        "bytes": np.arange(20, dtype=np.uint8),
        "step": np.array(5, np.int64),
    }


def model(elements: int = 2 * BLOCK_ELEMENTS + 4321) -> dict[str, np.ndarray]:
    """Weights spanning several shuffle blocks, plus tensors of other dtypes."""
    rng = np.random.default_rng(11)
    return {
        "w": rng.normal(0, 0.05, elements).astype(np.float32),
        "w64": rng.normal(0, 1, 5000).astype(np.float64),
        "h": rng.normal(0, 1, 7000).astype(np.float16),
        "q": rng.integers(-3, 4, (1 << 20) + 17, dtype=np.int8),  # two plain chunks
        "zero": np.zeros((300, 300), np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def pieces_of(blob: bytes) -> list[tuple[int, int]]:
    meta_len = FIXED.unpack_from(blob)[6]
    count = FIXED.unpack_from(blob)[5]
    return [(r.method, r.size) for r in scan_pieces(memoryview(blob)[28 + meta_len :], count)]


# ------------------------------------------------------------------ version 1 is still read


def test_committed_v1_sample_still_decodes() -> None:
    blob = V1_SAMPLE.read_bytes()
    assert blob[4] == 1
    info = inspect(blob)
    assert info.format_version == 1 and info.shuffled
    ckpt = decode(blob)
    assert ckpt.metadata == {"model": "v1-sample", "round": "7"}
    expected = v1_sample_arrays()
    assert sorted(ckpt.arrays) == sorted(expected)
    for name, arr in expected.items():
        assert ckpt.arrays[name].dtype == arr.dtype
        assert ckpt.arrays[name].tobytes() == arr.tobytes(), name
    # re-encoding writes the current version, with the same content
    again = encode(ckpt.arrays, ckpt.metadata)
    assert again[4] == FORMAT_VERSION == 2
    assert all(np.array_equal(decode(again).arrays[k], v) for k, v in expected.items())


# ------------------------------------------------------------------ determinism


def test_same_bytes_for_every_thread_count() -> None:
    arrays = model()
    blobs = {threads: encode(arrays, {"r": "1"}, threads=threads) for threads in (1, 2, 3, 8)}
    assert len(set(blobs.values())) == 1
    methods = {m for m, _ in pieces_of(blobs[1])}
    assert methods == {METHOD_RAW, METHOD_ZSTD}  # the input exercises both kinds of piece
    for threads in (1, 4):
        out = decode(blobs[1], threads=threads)
        for name, arr in arrays.items():
            assert out.arrays[name].tobytes() == arr.tobytes(), name


_DIGEST_CHILD = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    from fedstore.format import encode
    rng = np.random.default_rng(11)
    arrays: dict[str, np.ndarray] = {
        "w": rng.normal(0, 0.05, 2 * (1 << 20) + 4321).astype(np.float32),
        "q": rng.integers(-3, 4, (1 << 20) + 17, dtype=np.int8),
        "h": rng.normal(0, 1, 7000).astype(np.float16),
    }
    print(hashlib.sha256(encode(arrays, {"r": "1"})).hexdigest())
    """
)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_same_bytes_across_processes_with_different_thread_counts() -> None:
    digests = set()
    for threads in ("1", "2", "5"):
        env = dict(os.environ, **{THREADS_ENV: threads, "PYTHONHASHSEED": threads})
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST_CHILD],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        digests.add(out.stdout.strip())
    namespace: dict[str, object] = {}
    buf = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, buf
    try:
        exec(_DIGEST_CHILD, namespace)  # noqa: S102 - our own fixed snippet
    finally:
        sys.stdout = sys_stdout
    digests.add(buf.getvalue().strip())
    assert len(digests) == 1


def test_golden_digest_pins_the_bytes() -> None:
    """Arithmetic input (no RNG): the same bytes on any machine with this zstandard."""
    i = np.arange(300_000, dtype=np.int64)
    spread = ((i * 2654435761) % (1 << 20) - (1 << 19)).astype(np.float64)
    arrays: dict[str, np.ndarray] = {
        # IEEE-exact operations only: integer hashing, a cast, one multiply, one cast
        "w": (spread * (0.05 / (1 << 19))).astype(np.float32),
        "b": (i[:1000] % 7).astype(np.int64),
        "u": (i[:5000] % 251).astype(np.uint8),
    }
    blob = encode(arrays, {"round": "1"})
    assert zstandard.ZSTD_VERSION == (1, 5, 7), "golden digest is for libzstd 1.5.7"
    assert hashlib.sha256(blob).hexdigest() == GOLDEN_SHA256, hashlib.sha256(blob).hexdigest()


GOLDEN_SHA256 = "ea7543db72417332f163c0dc45c24dba23069b487b20806aff2bd514572cd57e"


def test_encode_to_writes_front_to_back_the_same_bytes(tmp_path: pathlib.Path) -> None:
    arrays = model(100_000)

    class AppendOnly(io.RawIOBase):
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def write(self, b: object) -> int:
            data = bytes(b)  # type: ignore[call-overload]
            self.parts.append(data)
            return len(data)

    sink = AppendOnly()
    written = encode_to(sink, arrays, {"a": "b"})  # type: ignore[arg-type]
    blob = b"".join(sink.parts)
    assert written == len(blob) and blob == encode(arrays, {"a": "b"})
    path = tmp_path / "m.fsck"
    path.write_bytes(blob)
    assert read_file(path).tobytes() == blob
    assert decode_file(path).arrays["w"].tobytes() == arrays["w"].tobytes()


def test_thread_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "3")
    assert resolve_threads(None) == 3
    assert resolve_threads(1) == 1
    monkeypatch.setenv(THREADS_ENV, "zero")
    with pytest.raises(ConfigError, match=THREADS_ENV):
        resolve_threads(None)
    with pytest.raises(ValueError):
        resolve_threads(0)


def test_noise_planes_are_stored_raw_and_exponent_planes_compressed() -> None:
    w = np.random.default_rng(1).normal(0, 0.05, BLOCK_ELEMENTS).astype(np.float32)
    pieces = pieces_of(encode({"w": w}))
    # index, then planes 0..3 of the one block: mantissa noise raw, exponent plane zstd
    assert [m for m, _ in pieces[1:]] == [METHOD_RAW, METHOD_RAW, METHOD_RAW, METHOD_ZSTD]
    assert pieces[4][1] < 0.4 * BLOCK_ELEMENTS


# ------------------------------------------------------------------ hostile pieces


def _v2(blob: bytes) -> tuple[bytes, int, list[tuple[int, int, int]]]:
    """(header incl. metadata, piece count, [(method, offset in blob, size)])."""
    meta_len = FIXED.unpack_from(blob)[6]
    count = FIXED.unpack_from(blob)[5]
    start = FIXED_HEADER_SIZE + meta_len
    refs = scan_pieces(memoryview(blob)[start:], count)
    return blob[:start], count, [(r.method, start + r.offset, r.size) for r in refs]


def _with_count(blob: bytes, count: int) -> bytes:
    fields = list(FIXED.unpack_from(blob))
    fields[5] = count
    return FIXED.pack(*fields) + blob[FIXED_HEADER_SIZE:]


@pytest.fixture
def blob() -> bytes:
    return encode(model(50_000), {"round": "2"})


def test_lying_piece_count(blob: bytes) -> None:
    _, count, _ = _v2(blob)
    with pytest.raises(FormatError, match="truncated"):
        decode(_with_count(blob, count + 1))
    with pytest.raises(FormatError, match="trailing"):
        decode(_with_count(blob, count - 1))
    with pytest.raises(FormatError, match="pieces"):
        decode(_with_count(blob, 1 << 40))
    with pytest.raises(FormatError, match="pieces"):
        inspect(_with_count(blob, 0))


def test_unknown_method_and_oversized_piece(blob: bytes) -> None:
    _, _, refs = _v2(blob)
    _, offset, size = refs[1]
    bad = bytearray(blob)
    bad[offset - PIECE_HEADER.size] = 7
    with pytest.raises(FormatError, match="unknown storage method 7"):
        decode(bytes(bad))
    bad = bytearray(blob)
    struct.pack_into("<I", bad, offset - 4, 1 << 30)
    with pytest.raises(FormatError, match="limit"):
        decode(bytes(bad))


def _replace_piece(blob: bytes, index: int, method: int, data: bytes) -> bytes:
    _, _, refs = _v2(blob)
    _, offset, size = refs[index]
    head = blob[: offset - PIECE_HEADER.size]
    return head + PIECE_HEADER.pack(method, len(data)) + data + blob[offset + size :]


def test_raw_piece_of_the_wrong_size(blob: bytes) -> None:
    _, _, refs = _v2(blob)
    method, offset, size = next(r for r in refs[1:] if r[0] == METHOD_RAW)
    index = refs.index((method, offset, size))
    liar = _replace_piece(blob, index, METHOD_RAW, blob[offset : offset + size - 1])
    with pytest.raises(FormatError, match=f"piece {index} holds {size - 1} raw bytes"):
        decode(liar)


def test_frame_declaring_another_size_is_refused_before_decompressing(blob: bytes) -> None:
    _, _, refs = _v2(blob)
    index = next(i for i, r in enumerate(refs) if i and r[0] == METHOD_ZSTD)
    bomb = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(512 << 20))
    with pytest.raises(FormatError, match=f"piece {index}: zstd frame declares {512 << 20}"):
        decode(_replace_piece(blob, index, METHOD_ZSTD, bomb))
    with pytest.raises(FormatError, match="declares"):
        inspect(_replace_piece(blob, index, METHOD_ZSTD, bomb))


def test_frame_without_checksum_or_size(blob: bytes) -> None:
    _, _, refs = _v2(blob)
    index = next(i for i, r in enumerate(refs) if i and r[0] == METHOD_ZSTD)
    method, offset, size = refs[index]
    raw = zstandard.ZstdDecompressor().decompress(blob[offset : offset + size])
    no_sum = zstandard.ZstdCompressor(write_checksum=False).compress(raw)
    with pytest.raises(FormatError, match="checksum"):
        decode(_replace_piece(blob, index, METHOD_ZSTD, no_sum))
    no_size = zstandard.ZstdCompressor(write_content_size=False, write_checksum=True).compress(raw)
    with pytest.raises(FormatError, match="does not declare its size"):
        decode(_replace_piece(blob, index, METHOD_ZSTD, no_size))
    junk = blob[offset : offset + size] + b"xx"
    with pytest.raises(FormatError, match="corrupt"):
        decode(_replace_piece(blob, index, METHOD_ZSTD, junk))


def test_index_piece_that_lies(blob: bytes) -> None:
    _, _, refs = _v2(blob)
    method, offset, size = refs[0]
    index = zstandard.ZstdDecompressor().decompress(blob[offset : offset + size])
    longer = (int.from_bytes(index[:8], "little") + 8).to_bytes(8, "little") + index[8:]
    with pytest.raises(FormatError, match="does not match its piece"):
        decode(_replace_piece(blob, 0, METHOD_RAW, longer))
    with pytest.raises(FormatError, match="8 to"):
        decode(_replace_piece(blob, 0, METHOD_RAW, b"\x00" * 4))
    # the index alone, stored raw instead of compressed, is still the same checkpoint
    same = decode(_replace_piece(blob, 0, METHOD_RAW, index))
    assert same.arrays["w"].tobytes() == decode(blob).arrays["w"].tobytes()


def test_every_truncation_of_a_v2_blob_is_a_format_error() -> None:
    small = encode({"w": np.arange(40, dtype=np.float32), "u": np.arange(9, dtype=np.uint8)})
    for cut in range(len(small)):
        with pytest.raises(FormatError):
            decode(small[:cut])

"""fedstore.format: round trips, determinism, compression, inspect, input validation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedstore.errors import ConfigError, FormatError, SizeLimitError
from fedstore.format import (
    MAGIC,
    MAX_DECODED_SIZE_ENV,
    Checkpoint,
    CheckpointInfo,
    decode,
    encode,
    inspect,
)
from fedstore.format.container import FIXED, FIXED_HEADER_SIZE
from fedstore.format.pieces import scan_pieces
from fedstore.format.shuffle import BLOCK_ELEMENTS, shuffle_into, unshuffle_into

DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
]
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (4, 5), (2, 3, 4)]


def random_array(rng: np.random.Generator, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dt.kind in "iu":
        info = np.iinfo(dt)  # type: ignore[type-var]
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return (rng.standard_normal(size=shape) * 100).astype(dt)


def assert_same_arrays(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert sorted(expected) == list(got)
    for name, arr in expected.items():
        out = got[name]
        assert out.shape == np.shape(arr), name
        assert out.dtype == np.asarray(arr).dtype.newbyteorder("="), name
        # byte equality also covers NaN payloads and -0.0
        assert out.tobytes() == np.ascontiguousarray(arr).astype(out.dtype).tobytes(), name


def frame_payload(blob: bytes) -> bytes:
    """The decompressed payload of a checkpoint, v1 or v2 (test helper, trusts the blob)."""
    _, version, _, _, _, count, meta_len = FIXED.unpack_from(blob)
    body = memoryview(blob)[FIXED_HEADER_SIZE + meta_len :]
    if version == 1:
        return zstandard.ZstdDecompressor().decompress(body)
    parts = []
    for ref in scan_pieces(body, count):
        data = bytes(body[ref.offset : ref.offset + ref.size])
        parts.append(zstandard.ZstdDecompressor().decompress(data) if ref.method else data)
    return b"".join(parts)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_every_dtype_and_shape(dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {
        "t": random_array(rng, dtype, shape),
        "other": random_array(rng, dtype, (3,)),
    }
    ckpt = decode(encode(arrays))
    assert_same_arrays(arrays, ckpt.arrays)
    assert ckpt.metadata == {}


def test_float_specials_round_trip_bit_exact() -> None:
    arrays: dict[str, np.ndarray] = {}
    for dt in (np.float16, np.float32, np.float64):
        info = np.finfo(dt)
        values = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, info.smallest_subnormal, info.max]
        arrays[np.dtype(dt).name] = np.array(values, dtype=dt)
    assert_same_arrays(arrays, decode(encode(arrays)).arrays)


def test_decoded_arrays_are_fresh_writable_and_contiguous() -> None:
    arrays: dict[str, np.ndarray] = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "m": np.ones(3, np.uint8),
    }
    for out in decode(encode(arrays)).arrays.values():
        assert out.flags.writeable and out.flags.c_contiguous
        out[...] = 0  # does not raise


def test_many_tensors_and_metadata_round_trip() -> None:
    rng = np.random.default_rng(1)
    arrays = {
        f"layer{i:04d}.{kind}": random_array(rng, DTYPES[i % len(DTYPES)], (i % 5, 3))
        for i in range(400)
        for kind in ("w", "b")
    }
    metadata = {
        "round": "12",
        "model": "digits-mlp",
        "peer": "12D3KooWxyz",
        "parent": "QmParent",
        "note": 'ünïcødé ✓ "quoted" \\ \n newline',
    }
    ckpt = decode(encode(arrays, metadata))
    assert_same_arrays(arrays, ckpt.arrays)
    assert ckpt.metadata == metadata
    assert ckpt.parameter_count == sum(a.size for a in arrays.values())
    assert ckpt.nbytes == sum(a.nbytes for a in arrays.values())


def test_encoding_ignores_insertion_order_byte_order_and_layout() -> None:
    rng = np.random.default_rng(2)
    base: dict[str, np.ndarray] = {
        "b": rng.standard_normal((6, 4)).astype(np.float32),
        "a": rng.integers(0, 1000, 10).astype(np.int64),
        "c": rng.integers(0, 2, 5).astype(np.bool_),
    }
    blob = encode(base, {"x": "1", "y": "2"})
    shuffled_order = {k: base[k] for k in ("c", "a", "b")}
    assert encode(shuffled_order, {"y": "2", "x": "1"}) == blob
    big_endian: dict[str, np.ndarray] = {
        "b": base["b"].astype(">f4"),
        "a": base["a"].astype(">i8"),
        "c": base["c"],
    }
    assert encode(big_endian, {"x": "1", "y": "2"}) == blob
    fortran = dict(base, b=np.asfortranarray(base["b"]))
    assert encode(fortran, {"x": "1", "y": "2"}) == blob
    strided = np.zeros((6, 8), np.float32)
    strided[:, ::2] = base["b"]
    assert encode(dict(base, b=strided[:, ::2]), {"x": "1", "y": "2"}) == blob
    assert encode(base, {"x": "1", "y": "3"}) != blob


def test_checkpoint_encode_method_matches_function() -> None:
    ckpt = Checkpoint(arrays={"w": np.ones(3)}, metadata={"round": "1"})
    assert ckpt.encode() == encode({"w": np.ones(3)}, {"round": "1"})
    again = decode(ckpt.encode())
    assert again.encode() == ckpt.encode()


_DIGEST_CODE = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from fedstore.format import encode

    def digest(order):
        rng = np.random.default_rng(1234)
        kinds = [np.float32, np.float16, np.int64, np.uint8, np.bool_]
        made = {
            f"layer{i}": rng.normal(0, 0.05, size=(i + 1, 257)).astype(kinds[i % 5])
            for i in range(30)
        }
        names = sorted(made, reverse=(order == "reversed"))
        meta_items = [("round", "7"), ("model", "m"), ("peer", "p"), ("parent", "QmX")]
        if order == "reversed":
            meta_items.reverse()
        blob = encode({n: made[n] for n in names}, dict(meta_items))
        return hashlib.sha256(blob).hexdigest()
    """
)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_deterministic_across_processes() -> None:
    child = _DIGEST_CODE + "\nimport sys\nprint(digest(sys.argv[1]))\n"
    digests = set()
    for seed, order in (("1", "forward"), ("2", "reversed"), ("3", "forward")):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", child, order],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        digests.add(out.stdout.strip())
    namespace: dict[str, Any] = {}
    exec(_DIGEST_CODE, namespace)  # noqa: S102 - our own fixed snippet
    digests.add(namespace["digest"]("reversed"))
    assert len(digests) == 1


def test_float_weights_compress_below_target_ratio() -> None:
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(0.0, 0.05, size=4_000_000).astype(np.float32)}
    raw = weights["w"].nbytes
    shuffled = len(encode(weights))
    plain = len(encode(weights, shuffle=False))
    assert shuffled / raw <= 0.86, shuffled / raw
    assert shuffled < plain  # the shuffle is what gets below plain zstd
    header = FIXED.unpack_from(encode(weights))
    assert header[3] & 1 and not FIXED.unpack_from(encode(weights, shuffle=False))[3] & 1


def test_payload_is_a_genuine_safetensors_file() -> None:
    rng = np.random.default_rng(3)
    arrays: dict[str, np.ndarray] = {
        "w": rng.standard_normal((5, 3)).astype(np.float32),
        "ids": np.arange(9, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "h": np.arange(4, dtype=np.float16),
        "scalar": np.array(2.5),
    }
    payload = frame_payload(encode(arrays, shuffle=False))
    loaded = safetensors.numpy.load(payload)
    assert_same_arrays(arrays, dict(sorted(loaded.items())))
    # with the shuffle, undoing it per tensor gives back the same safetensors payload
    shuffled = bytearray(frame_payload(encode(arrays)))
    index_len = int.from_bytes(shuffled[:8], "little")
    index = json.loads(shuffled[8 : 8 + index_len])
    start = 8 + index_len
    for spec in index.values():
        itemsize = {"F32": 4, "I64": 8, "BOOL": 1, "F16": 2, "F64": 8}[spec["dtype"]]
        begin, end = (start + o for o in spec["data_offsets"])
        out = np.empty((end - begin) // itemsize, dtype=f"<u{itemsize}")
        unshuffle_into(out, np.frombuffer(bytes(shuffled[begin:end]), np.uint8))
        shuffled[begin:end] = out.tobytes()
    assert bytes(shuffled) == payload


def test_shuffle_helpers_are_inverse() -> None:
    rng = np.random.default_rng(4)
    for dtype in (np.float16, np.float32, np.float64, np.int64):
        src = random_array(rng, dtype, (200_003,))
        buf = np.empty(src.nbytes, np.uint8)
        shuffle_into(buf, src)
        assert buf[: src.size].tobytes() == src.view(np.uint8)[:: src.itemsize].tobytes()
        back = np.empty_like(src)
        unshuffle_into(back, buf)
        assert back.tobytes() == src.tobytes()


def test_shuffle_works_in_blocks_and_large_tensors_round_trip() -> None:
    n = 2 * BLOCK_ELEMENTS + 12_345  # two full blocks and a partial one
    src = np.random.default_rng(6).normal(0, 0.05, n).astype(np.float32)
    buf = np.empty(src.nbytes, np.uint8)
    shuffle_into(buf, src)
    raw = src.view(np.uint8)
    block = BLOCK_ELEMENTS * 4
    # block 1, plane 3 holds byte 3 of elements [B, 2B)
    plane = buf[block + 3 * BLOCK_ELEMENTS : block + 4 * BLOCK_ELEMENTS]
    assert plane.tobytes() == raw[block + 3 : 2 * block : 4].tobytes()
    # the last, partial block: plane 0 holds byte 0 of the trailing elements
    tail = buf[2 * block : 2 * block + 12_345]
    assert tail.tobytes() == raw[2 * block :: 4].tobytes()
    arrays = {"big": src, "matrix": src[: 3 * BLOCK_ELEMENTS // 4].reshape(-1, 4)}
    assert_same_arrays(arrays, decode(encode(arrays)).arrays)


def test_inspect_reports_header_tensors_and_metadata() -> None:
    arrays: dict[str, np.ndarray] = {
        "dense.w": np.zeros((64, 32), np.float32),
        "dense.b": np.zeros(32, np.float32),
        "step": np.array(5, np.int64),
    }
    blob = encode(arrays, {"round": "3", "model": "mlp"})
    info = inspect(blob)
    assert isinstance(info, CheckpointInfo)
    assert info.format_version == 2 and info.codec == "zstd" and info.shuffled
    assert info.stored_size == len(blob)
    assert info.raw_size == len(frame_payload(blob))
    assert [t.name for t in info.tensors] == ["dense.b", "dense.w", "step"]
    assert info.tensors[1].dtype == "float32" and info.tensors[1].shape == (64, 32)
    assert info.tensors[1].nbytes == 64 * 32 * 4
    assert info.parameter_count == 64 * 32 + 32 + 1
    assert info.tensor_bytes == sum(a.nbytes for a in arrays.values())
    assert info.metadata == {"model": "mlp", "round": "3"}
    as_dict = json.loads(json.dumps(info.to_dict()))
    assert as_dict["tensors"][2] == {"name": "step", "dtype": "int64", "shape": [], "nbytes": 8}
    text = str(info)
    assert "dense.w" in text and "round = 3" in text and "2,081 parameters" in text


def test_inspect_reads_only_the_index() -> None:
    rng = np.random.default_rng(5)
    blob = bytearray(encode({"w": rng.standard_normal(100_000).astype(np.float32)}))
    blob[-1] ^= 0xFF  # break the frame checksum, which only a full decompression sees
    with pytest.raises(FormatError, match="checksum"):
        decode(bytes(blob))
    assert inspect(bytes(blob)).tensors[0].shape == (100_000,)


def test_size_cap_parameter_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = encode({"w": np.zeros(1000, np.float64)})
    raw = inspect(blob).raw_size
    assert decode(blob, max_decoded_size=raw).arrays["w"].shape == (1000,)
    with pytest.raises(SizeLimitError, match="above the limit"):
        decode(blob, max_decoded_size=raw - 1)
    monkeypatch.setenv(MAX_DECODED_SIZE_ENV, str(raw - 1))
    with pytest.raises(SizeLimitError):
        decode(blob)
    assert decode(blob, max_decoded_size=raw).metadata == {}
    with pytest.raises(SizeLimitError):
        inspect(blob).check_decoded_size()
    inspect(blob).check_decoded_size(raw)
    monkeypatch.delenv(MAX_DECODED_SIZE_ENV)
    inspect(blob).check_decoded_size()
    with pytest.raises(SizeLimitError, match="above the limit"):
        inspect(blob).check_decoded_size(raw - 1)
    monkeypatch.setenv(MAX_DECODED_SIZE_ENV, "lots")
    with pytest.raises(ConfigError, match=MAX_DECODED_SIZE_ENV):
        decode(blob)
    with pytest.raises(ValueError):
        decode(blob, max_decoded_size=-5)


@pytest.mark.parametrize(
    ("arrays", "metadata", "error", "match"),
    [
        ({"w": np.zeros(2)}, {"round": 3}, TypeError, "must be str"),
        ({"w": np.zeros(2)}, {3: "x"}, TypeError, "keys must be str"),
        ({"w": np.zeros(2)}, {"": "x"}, ValueError, "non-empty"),
        ({"w": np.zeros(2)}, ["round"], TypeError, "mapping"),
        ({"w": [1.0, 2.0]}, None, TypeError, "numpy.ndarray"),
        ({"w": np.array([object()])}, None, TypeError, "dtype object"),
        ({"w": np.zeros(2, np.complex64)}, None, TypeError, "complex64"),
        ({"w": np.array(["a"])}, None, TypeError, "do not support"),
        ({"w": np.ma.masked_array([1.0])}, None, TypeError, "numpy.ndarray"),
        ({"": np.zeros(2)}, None, ValueError, "non-empty"),
        ({"a\x00b": np.zeros(2)}, None, ValueError, "NUL"),
        ({"a\nb": np.zeros(2)}, None, ValueError, "control"),
        ({"x" * 2000: np.zeros(2)}, None, ValueError, "limit 1024"),
        ({"__metadata__": np.zeros(2)}, None, ValueError, "reserved"),
        ({"\ud800": np.zeros(2)}, None, ValueError, "surrogate"),
        ({7: np.zeros(2)}, None, TypeError, "must be str"),
    ],
)
def test_encode_rejects_bad_input(
    arrays: object, metadata: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        encode(arrays, metadata)  # type: ignore[arg-type]


def test_bool_views_of_other_bytes_are_stored_as_zero_and_one() -> None:
    odd = np.array([0, 1, 2, 255], dtype=np.uint8).view(np.bool_)
    out = decode(encode({"m": odd})).arrays["m"]
    assert out.tolist() == [False, True, True, True]
    assert out.view(np.uint8).tolist() == [0, 1, 1, 1]
    assert encode({"m": odd}) == encode({"m": np.array([False, True, True, True])})


def test_encode_accepts_numpy_scalars_and_empty_checkpoints() -> None:
    ckpt = decode(encode({"s": np.float32(1.5)}))
    assert ckpt.arrays["s"].shape == () and ckpt.arrays["s"] == np.float32(1.5)
    empty = decode(encode({}, {"round": "0"}))
    assert empty.arrays == {} and empty.metadata == {"round": "0"}


def test_blob_starts_with_magic() -> None:
    assert encode({"w": np.zeros(1)}).startswith(MAGIC)


# ---------------------------------------------------------------- properties

_names = st.text(
    alphabet=st.characters(min_codepoint=0x20, exclude_categories=["Cs"]),
    min_size=1,
    max_size=12,
).filter(lambda s: s != "__metadata__")
_arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(
        dtype=np.dtype(dt), shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrays=st.dictionaries(_names, _arrays, max_size=6),
    metadata=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=4),
)
def test_property_round_trip(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    blob = encode(arrays, metadata)
    ckpt = decode(blob)
    assert_same_arrays(arrays, ckpt.arrays)
    assert ckpt.metadata == metadata
    assert encode(ckpt.arrays, ckpt.metadata) == blob
    assert inspect(blob).parameter_count == sum(a.size for a in arrays.values())


def _decode_or_format_error(data: bytes) -> None:
    """Decode must return a Checkpoint or raise FormatError, and do so quickly."""
    start = time.perf_counter()
    try:
        ckpt = decode(data, max_decoded_size=1 << 20)
    except FormatError:
        pass
    else:
        assert isinstance(ckpt, Checkpoint)
    # generous: examples take milliseconds; this catches runaway loops, not jitter
    assert time.perf_counter() - start < 5.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_property_arbitrary_bytes_only_raise_format_error(data: bytes) -> None:
    _decode_or_format_error(data)
    _decode_or_format_error(MAGIC + data)
    _decode_or_format_error(MAGIC + b"\x01\x01\x00\x00" + data)


_VALID = encode(
    {
        "w": np.random.default_rng(9).standard_normal((20, 10)).astype(np.float32),
        "ids": np.arange(5, dtype=np.int64),
        "mask": np.array([True, False]),
    },
    {"round": "4"},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(0, len(_VALID) - 1),
    value=st.integers(0, 255),
    cut=st.integers(0, len(_VALID)),
    mode=st.sampled_from(["flip", "truncate", "insert", "delete"]),
)
def test_property_mutated_blobs_never_crash(position: int, value: int, cut: int, mode: str) -> None:
    blob = bytearray(_VALID)
    if mode == "flip":
        blob[position] = value
    elif mode == "truncate":
        del blob[cut:]
    elif mode == "insert":
        blob.insert(position, value)
    else:
        del blob[position]
    _decode_or_format_error(bytes(blob))
    try:
        inspect(bytes(blob))
    except FormatError:
        pass


def test_every_truncation_is_a_format_error() -> None:
    for cut in range(len(_VALID)):
        with pytest.raises(FormatError):
            decode(_VALID[:cut])


def test_valid_blob_digest_is_stable_within_process() -> None:
    digest = hashlib.sha256(_VALID).hexdigest()
    again = encode(decode(_VALID).arrays, {"round": "4"})
    assert hashlib.sha256(again).hexdigest() == digest

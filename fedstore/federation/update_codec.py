"""Lossy encodings of trainers' updates on ``fed-learn``: float16, int8, top-k.

A federation chooses one encoding
(:class:`~fedstore.federation.update_encoding.UpdateEncoding`, text form
``float32``, ``float16``, ``int8``, ``int8:BLOCK`` or ``topk:FRACTION``) in
:class:`~fedstore.federation.settings.AggregatorSettings`; the aggregator
sends it to the trainers in every ``ROUND``'s config under
:data:`~fedstore.federation.update_encoding.ENCODING_CONFIG_KEY`, the
trainers encode their updates with it and name it in the ``UPDATE`` header
(``encoding``), and the aggregator decodes and validates them with
:func:`decode_update` before the strategy sees them.
``float32`` (the default) is the lossless path that existed before: the full
arrays as a fedstore checkpoint, no ``encoding`` key. A federation using a
lossy encoding still accepts float32 updates.

What each lossy encoding sends, per floating-point tensor, given the round's
base model ``b`` (the global model named by the update's ``base_cid``, which
the aggregator holds) and ``c = new - b + e`` where ``e`` is the trainer's
error-feedback residual:

``float16``
    the *weights* ``b + c`` rounded to float16 (weights, not deltas: the
    exponents of weights are far more alike than those of deltas, which is
    what lets the payload compress below half of float32's).
``int8`` / ``int8:BLOCK``
    the *delta* ``c`` as int8 ``rint(c / s)`` in [-127, 127] with one float32
    scale ``s = max|c| / 127`` per tensor, or per block of ``BLOCK``
    elements.
``topk:FRACTION``
    the *delta* ``c`` at its ``k = max(1, ceil(FRACTION * n))`` entries of
    largest magnitude (ties to the lower index), as sorted indices (gaps)
    and float32 values; the other entries are 0.

The aggregator reconstructs full weights (``b + delta``, in float32 for
float16/float32 tensors and float64 for float64 ones, cast to the tensor's
dtype), so every strategy aggregates weights exactly as with float32 updates
(FedAvg of the reconstructed weights is ``b`` plus the FedAvg of the decoded
deltas). The trainer keeps ``e = (b + c) - reconstruction``, computed with
the decoder's own arithmetic, and adds it to its next update
(:class:`UpdateEncoder`): what compression drops is delayed, not lost.
Non-float tensors, empty tensors and tensors whose lossy form would not be
finite travel ``raw`` (their exact values in their dtype).

Payload (all integers little-endian)::

    b"FSUE" | version u8 (=1) | text length u8 | encoding text (ASCII)
    | tensor count u32 | one mode byte per tensor
    | one zstd frame (content size and checksum written) of the body

Tensors are those of the base model in sorted name order: the update is
relative to the base, so names, shapes and dtypes are the base's and are not
repeated. The body is four sections, each the concatenation over tensors of
that tensor's part (and flushed as its own zstd blocks, so each keeps its own
entropy statistics): 0 the int8 scales; 1 the raw tensors' bytes; 2 the
float16 low bytes, the int8 values, the top-k index gaps (byte planes); 3 the
float16 high bytes, the top-k values (float32 byte planes).

Decoding is strict and bounded: the prefix fixes every section's exact size
(from the base model's shapes and the encoding); the frame must declare
exactly that content size, which is checked
(:func:`fedstore.format.zstd_frame.check_frame`) before anything is
decompressed; modes must fit the encoding and the tensor's dtype; scales
and values must be finite, int8 values in [-127, 127], top-k indices strictly
increasing and in range. Every failure is a :class:`CodecError` whose
``reason`` is a rejection counter key. Encoding is deterministic: the same
arrays (and residuals) give the same bytes in any process.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
import zstandard

from fedstore.errors import FormatError
from fedstore.federation.messages import MessageError
from fedstore.federation.update_encoding import (
    ENCODING_CONFIG_KEY,
    FLOAT32,
    MAX_ENCODING_TEXT,
    EncodingKind,
    UpdateEncoding,
    split_round_config,
)

__all__ = [
    "ENCODING_CONFIG_KEY",
    "FLOAT32",
    "CodecError",
    "EncodingKind",
    "UpdateEncoder",
    "UpdateEncoding",
    "decode_update",
    "encode_update",
    "split_round_config",
]

NDArray = npt.NDArray[np.generic]

MAGIC = b"FSUE"
VERSION = 1
_HEAD = struct.Struct("<4sBB")
_COUNT = struct.Struct("<I")
_SECTIONS = 4
_F16_MAX = float(np.finfo(np.float16).max)


class CodecError(MessageError):
    """An encoded update is malformed. ``reason`` is a rejection counter key."""

    def __init__(self, message: str, *, reason: str = "bad_encoding") -> None:
        super().__init__(message, reason=reason)


class Mode(IntEnum):
    """How one tensor travels inside an encoded update."""

    RAW = 0
    F16 = 1
    INT8 = 2
    TOPK_U8 = 3
    TOPK_U16 = 4
    TOPK_U32 = 5


_LOSSY_MODE = {
    EncodingKind.FLOAT16: {Mode.F16},
    EncodingKind.INT8: {Mode.INT8},
    EncodingKind.TOPK: {Mode.TOPK_U8, Mode.TOPK_U16, Mode.TOPK_U32},
}
_GAP_DTYPE: dict[Mode, np.dtype[np.generic]] = {
    Mode.TOPK_U8: np.dtype("<u1"),
    Mode.TOPK_U16: np.dtype("<u2"),
    Mode.TOPK_U32: np.dtype("<u4"),
}


def _work_dtype(dtype: np.dtype[np.generic]) -> np.dtype[np.generic]:
    """The dtype reconstructions are computed in: float64 for float64, float32 otherwise."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _nblocks(enc: UpdateEncoding, n: int) -> int:
    return -(-n // enc.block) if enc.block else 1


def _topk_count(enc: UpdateEncoding, n: int) -> int:
    return min(n, max(1, math.ceil(enc.fraction * n)))


def _parts(enc: UpdateEncoding, mode: Mode, arr: NDArray) -> tuple[int, int, int, int]:
    """Bytes this tensor adds to each body section under ``mode``."""
    n = arr.size
    if mode is Mode.RAW:
        return (0, arr.nbytes, 0, 0)
    if mode is Mode.F16:
        return (0, 0, n, n)
    if mode is Mode.INT8:
        return (4 * _nblocks(enc, n), 0, n, 0)
    k = _topk_count(enc, n)
    return (0, 0, k * _GAP_DTYPE[mode].itemsize, 4 * k)


# -- shared arithmetic (the encoder reconstructs exactly as the decoder does) ---------------


def _planes(arr: NDArray) -> bytes:
    """Little-endian byte planes of ``arr``: byte 0 of every element, then byte 1, ..."""
    a = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).reshape(-1)
    return a.view(np.uint8).reshape(a.size, a.dtype.itemsize).T.tobytes()


def _unplanes(planes: list[memoryview], dtype: np.dtype[np.generic], count: int) -> NDArray:
    """Elements of ``dtype`` from their byte planes (``planes`` in order, or one buffer of all)."""
    size = dtype.itemsize
    if len(planes) == 1 and size > 1:
        planes = [planes[0][i * count : (i + 1) * count] for i in range(size)]
    out: NDArray = np.empty(count, dtype.newbyteorder("<"))
    grid = out.view(np.uint8).reshape(count, size)
    for i, plane in enumerate(planes):
        grid[:, i] = np.frombuffer(plane, dtype=np.uint8)
    return out


def _int8_delta(q: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], block: int) -> NDArray:
    """``q * scale`` in float32; scale ``i`` covers ``q[i*block:(i+1)*block]``."""
    if scales.size > 1:
        out: NDArray = q.astype(np.float32) * np.repeat(scales, block)[: q.size]
    else:
        out = q.astype(np.float32) * scales[0]
    return out


def _add(base: NDArray, delta: NDArray) -> NDArray:
    work = _work_dtype(base.dtype)
    out: NDArray = (base.reshape(-1).astype(work) + delta.astype(work)).astype(base.dtype)
    return out.reshape(base.shape)


def _add_sparse(base: NDArray, idx: npt.NDArray[np.int64], values: NDArray) -> NDArray:
    work = _work_dtype(base.dtype)
    flat = base.reshape(-1).astype(work)  # a copy
    flat[idx] += values.astype(work)
    out: NDArray = flat.astype(base.dtype).reshape(base.shape)
    return out


# -- encoding ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Encoded:
    mode: Mode
    parts: tuple[bytes, bytes, bytes, bytes]
    value: NDArray  # what the decoder will reconstruct


def _raw(value: NDArray) -> _Encoded:
    le = np.ascontiguousarray(value.astype(value.dtype.newbyteorder("<"), copy=False))
    return _Encoded(Mode.RAW, (b"", le.tobytes(), b"", b""), value)


def _encode_tensor(enc: UpdateEncoding, base: NDArray, target: npt.NDArray[np.float64]) -> _Encoded:
    """``target`` (= base + delta + residual, flat float64, finite) in ``enc``; raw if need be."""
    if enc.kind is EncodingKind.FLOAT16:
        out = _encode_f16(base, target)
    else:
        delta = target - base.reshape(-1).astype(np.float64)
        out = _encode_int8(enc, base, delta) if enc.kind is EncodingKind.INT8 else None
        if enc.kind is EncodingKind.TOPK:
            out = _encode_topk(enc, base, delta)
    # a lossy form that would not be finite (overflow): the exact values instead
    return out if out is not None else _raw(target.astype(base.dtype).reshape(base.shape))


def _encode_f16(base: NDArray, target: npt.NDArray[np.float64]) -> _Encoded | None:
    if float(np.abs(target).max()) > _F16_MAX:
        return None
    h = target.astype(np.float16)
    planes = _planes(h)
    n = h.size
    return _Encoded(
        Mode.F16, (b"", b"", planes[:n], planes[n:]), h.astype(base.dtype).reshape(base.shape)
    )


def _encode_int8(
    enc: UpdateEncoding, base: NDArray, delta: npt.NDArray[np.float64]
) -> _Encoded | None:
    n = delta.size
    mag = np.abs(delta)
    if _nblocks(enc, n) > 1:
        maxabs = np.maximum.reduceat(mag, np.arange(0, n, enc.block))
        scales = (maxabs / 127.0).astype(np.float32)
        step: npt.NDArray[np.float64] | np.float64 = np.repeat(
            scales.astype(np.float64), enc.block
        )[:n]
    else:
        scales = np.array([mag.max() / 127.0], dtype=np.float32)
        step = np.float64(scales[0])
    if not bool(np.isfinite(scales).all()):
        return None
    q64 = np.where(step > 0, np.rint(delta / step), 0.0)
    q = np.clip(q64, -127, 127).astype(np.int8)
    value = _add(base, _int8_delta(q, scales, enc.block))
    return _Encoded(Mode.INT8, (scales.astype("<f4").tobytes(), b"", q.tobytes(), b""), value)


def _encode_topk(
    enc: UpdateEncoding, base: NDArray, delta: npt.NDArray[np.float64]
) -> _Encoded | None:
    n = delta.size
    if n >= 1 << 32:
        return None
    k = _topk_count(enc, n)
    mag = np.abs(delta)
    if k >= n:
        idx = np.arange(n, dtype=np.int64)
    else:
        # the k-th largest magnitude; everything above it, then ties by lowest index
        threshold = np.partition(mag, n - k)[n - k]
        above = np.flatnonzero(mag > threshold)
        ties = np.flatnonzero(mag == threshold)[: k - above.size]
        idx = np.sort(np.concatenate([above, ties])).astype(np.int64)
    vals = delta[idx].astype(np.float32)
    if not bool(np.isfinite(vals).all()):
        return None
    gaps = np.diff(idx, prepend=np.int64(0))
    top = int(gaps.max())
    mode = Mode.TOPK_U8 if top < 1 << 8 else Mode.TOPK_U16 if top < 1 << 16 else Mode.TOPK_U32
    gap_planes = _planes(gaps.astype(_GAP_DTYPE[mode]))
    return _Encoded(mode, (b"", b"", gap_planes, _planes(vals)), _add_sparse(base, idx, vals))


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _quiet(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run ``fn`` with numpy's overflow/invalid warnings off: an overflow to Inf (or Inf - Inf)
    is expected and handled here (raw fallback; the aggregator refuses non-finite values)."""

    @functools.wraps(fn)
    def quiet(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return fn(*args, **kwargs)

    return quiet


@_quiet
def encode_update(
    base: Mapping[str, NDArray],
    new: Mapping[str, NDArray],
    enc: UpdateEncoding,
    residual: Mapping[str, NDArray] | None = None,
) -> tuple[bytes, dict[str, NDArray]]:
    """The payload of ``new`` against ``base`` in the lossy encoding ``enc``, and its decoding.

    ``residual`` (error feedback, same names and shapes) is added to the
    delta first. Returns ``(payload, reconstructed)`` where ``reconstructed``
    is bit for bit what :func:`decode_update` will return; the caller's new
    residual is ``base + delta + residual - reconstructed``. Raises
    :class:`ValueError` if ``new`` does not have ``base``'s names, shapes and
    dtypes (such an update cannot be relative to the base; send it as
    float32 and let the aggregator say why it is refused). Deterministic.
    """
    if not enc.lossy:
        raise ValueError("float32 updates are fedstore checkpoints, not encoded updates")
    names = sorted(base)
    if sorted(new) != names:
        raise ValueError("the update's tensor names differ from the base model's")
    encoded: list[_Encoded] = []
    for name in names:
        b = np.asarray(base[name])
        a = np.asarray(new[name])
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"tensor {name!r} differs from the base model's in shape or dtype")
        if b.dtype.kind != "f" or b.size == 0:
            encoded.append(_raw(a))
            continue
        target = a.reshape(-1).astype(np.float64)
        if residual is not None and name in residual:
            target = target + np.asarray(residual[name], np.float64).reshape(-1)
        if not bool(np.isfinite(target).all()):
            encoded.append(_raw(a))
            continue
        encoded.append(_encode_tensor(enc, b, target))
    return _pack(enc, encoded), {n: e.value for n, e in zip(names, encoded, strict=True)}


def _pack(enc: UpdateEncoding, encoded: list[_Encoded]) -> bytes:
    text = enc.text.encode("ascii")
    sections = [b"".join(e.parts[i] for e in encoded) for i in range(_SECTIONS)]
    body_len = sum(len(s) for s in sections)
    from fedstore.format.zstd_frame import compression_parameters

    cobj = zstandard.ZstdCompressor(compression_params=compression_parameters()).compressobj(
        size=body_len
    )
    frame = []
    for i, section in enumerate(s for s in sections if s):
        if i:  # each section starts a new zstd block, with its own literal statistics
            frame.append(cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        frame.append(cobj.compress(section))
    frame.append(cobj.flush())
    return b"".join(
        [
            _HEAD.pack(MAGIC, VERSION, len(text)),
            text,
            _COUNT.pack(len(encoded)),
            bytes(int(e.mode) for e in encoded),
            *frame,
        ]
    )


# -- decoding ------------------------------------------------------------------------------


@_quiet
def decode_update(
    data: bytes | memoryview, base: Mapping[str, NDArray], enc: UpdateEncoding
) -> dict[str, NDArray]:
    """The full arrays of an update encoded with ``enc`` against ``base``; CodecError otherwise.

    Strict and bounded (module docstring): every size is checked against
    what ``base`` and ``enc`` allow before anything is decompressed or
    allocated. Pure and CPU-bound: async callers run it in a worker thread.
    """
    if not enc.lossy:
        raise CodecError("float32 updates are fedstore checkpoints, not encoded updates")
    view = memoryview(data).cast("B")
    names = sorted(base)
    pos = _HEAD.size
    if len(view) < pos:
        raise CodecError("encoded update is too short")
    magic, version, tlen = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise CodecError("not an encoded update (bad magic)")
    if version != VERSION:
        raise CodecError(f"unsupported encoded-update version {version}")
    if tlen > MAX_ENCODING_TEXT or pos + tlen + _COUNT.size > len(view):
        raise CodecError("encoded update: encoding name out of bounds")
    text = bytes(view[pos : pos + tlen])
    pos += tlen
    if text != enc.text.encode("ascii"):
        raise CodecError(
            f"payload is encoded as {text.decode('ascii', 'replace')[:MAX_ENCODING_TEXT]!r}, "
            f"the update says {enc.text}"
        )
    (count,) = _COUNT.unpack_from(view, pos)
    pos += _COUNT.size
    if count != len(names):
        raise CodecError(
            f"payload has {count} tensors, the base model {len(names)}", reason="wrong_names"
        )
    if pos + count > len(view):
        raise CodecError("encoded update is truncated in its tensor modes")
    modes = _modes(view[pos : pos + count], names, base, enc)
    pos += count
    sizes = [_parts(enc, m, np.asarray(base[nm])) for nm, m in zip(names, modes, strict=True)]
    section_len = [sum(p[i] for p in sizes) for i in range(_SECTIONS)]
    # the modes fix the body's exact size; the frame must declare exactly that
    body = _inflate(view[pos:], sum(section_len))
    starts = [sum(section_len[:i]) for i in range(_SECTIONS)]
    out: dict[str, NDArray] = {}
    for name, mode, part in zip(names, modes, sizes, strict=True):
        chunks = []
        for i in range(_SECTIONS):
            chunks.append(body[starts[i] : starts[i] + part[i]])
            starts[i] += part[i]
        out[name] = _decode_tensor(name, mode, np.asarray(base[name]), enc, chunks)
    return out


def _modes(
    raw: memoryview, names: list[str], base: Mapping[str, NDArray], enc: UpdateEncoding
) -> list[Mode]:
    allowed = _LOSSY_MODE[enc.kind]
    modes = []
    for name, byte in zip(names, bytes(raw), strict=True):
        try:
            mode = Mode(byte)
        except ValueError:
            raise CodecError(f"tensor {name!r}: unknown mode {byte}") from None
        if mode is not Mode.RAW:
            arr = np.asarray(base[name])
            if mode not in allowed:
                raise CodecError(f"tensor {name!r}: mode {mode.name} is not part of {enc.text}")
            if arr.dtype.kind != "f" or arr.size == 0:
                raise CodecError(
                    f"tensor {name!r}: {arr.dtype} tensors of {arr.size} elements travel raw"
                )
        modes.append(mode)
    return modes


def _inflate(frame: memoryview, body_len: int) -> memoryview:
    from fedstore.format.zstd_frame import FrameReader, check_frame

    try:
        check_frame(frame, body_len)
        buf = np.empty(body_len, dtype=np.uint8)
        with FrameReader(frame) as reader:
            reader.readinto_exact(buf)
            reader.finish()
    except FormatError as exc:
        raise CodecError(f"encoded update body is not a valid zstd frame: {exc}") from exc
    return memoryview(buf.data).cast("B")


def _decode_tensor(
    name: str, mode: Mode, base: NDArray, enc: UpdateEncoding, chunks: list[memoryview]
) -> NDArray:
    n = base.size
    if mode is Mode.RAW:
        raw = np.frombuffer(chunks[1], dtype=base.dtype.newbyteorder("<"))
        out: NDArray = raw.astype(base.dtype).reshape(base.shape)
        return out
    if mode is Mode.F16:
        h = _unplanes([chunks[2], chunks[3]], np.dtype(np.float16), n)
        if not bool(np.isfinite(h).all()):
            raise CodecError(f"tensor {name!r} has NaN or Inf", reason="non_finite")
        out = h.astype(base.dtype).reshape(base.shape)
        return out
    if mode is Mode.INT8:
        scales = np.frombuffer(chunks[0], dtype="<f4").astype(np.float32)
        if not bool(np.isfinite(scales).all()):
            raise CodecError(f"tensor {name!r} has a NaN or Inf int8 scale", reason="non_finite")
        if bool((scales < 0).any()):
            raise CodecError(f"tensor {name!r}: int8 scales must be >= 0")
        q = np.frombuffer(chunks[2], dtype=np.int8)
        if bool((q == -128).any()):
            raise CodecError(f"tensor {name!r}: int8 value -128 (the range is -127..127)")
        return _add(base, _int8_delta(q, scales, enc.block))
    k = _topk_count(enc, n)
    gaps = _unplanes([chunks[2]], _GAP_DTYPE[mode], k).astype(np.int64)
    if k > 1 and bool((gaps[1:] < 1).any()):
        raise CodecError(f"tensor {name!r}: top-k indices are not strictly increasing")
    idx = np.cumsum(gaps)
    if int(idx[-1]) >= n:
        raise CodecError(f"tensor {name!r}: top-k index {int(idx[-1])} out of range {n}")
    vals = _unplanes([chunks[3]], np.dtype(np.float32), k)
    if not bool(np.isfinite(vals).all()):
        raise CodecError(f"tensor {name!r} has NaN or Inf", reason="non_finite")
    return _add_sparse(base, idx, vals)


# -- the trainer's side: error feedback ------------------------------------------------------


class UpdateEncoder:
    """Encodes one trainer's successive updates in one encoding, with error feedback.

    :meth:`encode` keeps, per tensor, what the last encoding dropped (the
    residual, float32 for float16/float32 tensors, float64 for float64 ones)
    and adds it to the next delta. The residuals are reset when the model's
    layout changes or a tensor had to travel raw because it was not finite.
    ``error_feedback=False`` keeps no residual (for comparison). Not thread
    safe: one encoder per trainer, one update at a time.
    """

    def __init__(self, encoding: UpdateEncoding, *, error_feedback: bool = True) -> None:
        if not encoding.lossy:
            raise ValueError("UpdateEncoder is for lossy encodings")
        self.encoding = encoding
        self.error_feedback = error_feedback
        self.residual: dict[str, NDArray] = {}

    @_quiet
    def encode(self, base: Mapping[str, NDArray], new: Mapping[str, NDArray]) -> bytes:
        """The payload of ``new`` against ``base``; updates the residuals. ValueError: see
        :func:`encode_update`."""
        usable = {
            k: v for k, v in self.residual.items() if k in base and v.shape == np.shape(base[k])
        }
        payload, decoded = encode_update(base, new, self.encoding, usable)
        if not self.error_feedback:
            return payload
        residual: dict[str, NDArray] = {}
        for name, value in decoded.items():
            b = np.asarray(base[name])
            if b.dtype.kind != "f" or b.size == 0:
                continue
            target = np.asarray(new[name], np.float64)
            if name in usable:
                target = target + np.asarray(usable[name], np.float64)
            r = target - value.astype(np.float64)
            if bool(np.isfinite(r).all()):
                residual[name] = r.astype(_work_dtype(b.dtype))
        self.residual = residual
        return payload

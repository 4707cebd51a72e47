"""The safetensors tensor index: building it on encode, validating it on decode.

The decompressed payload of a checkpoint is a safetensors file: an 8-byte
little-endian header length N, N bytes of JSON (padded with spaces to a
multiple of 8), then the tensor data. fedstore writes the JSON in one
canonical form and refuses any other:

* tensors ordered by (itemsize descending, name), which keeps every tensor
  aligned to its itemsize, as the safetensors writer does; data offsets are
  contiguous from 0 in that order, with no gaps or overlaps;
* each entry is ``"name":{"dtype":D,"shape":[...],"data_offsets":[b,e]}``
  with compact separators; no ``__metadata__`` (metadata lives in the
  fedstore header, see :mod:`fedstore.format.container`).

Validation is done here rather than by the safetensors library so that a
malformed index gives a precise FormatError instead of an obscure one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedstore.errors import FormatError

MAX_NAME_BYTES = 1024
MAX_NDIM = 32
MAX_INDEX_BYTES = 16 << 20
MAX_ELEMENTS = 1 << 53
#: Most tensors one checkpoint may hold. Real models have thousands at most;
#: the cap keeps a small hostile file from costing seconds of CPU and
#: hundreds of MB of array objects to decode.
MAX_TENSORS = 65536
RESERVED_NAME = "__metadata__"

# safetensors dtype name -> little-endian numpy dtype
ST_DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype("|b1"),
    "U8": np.dtype("|u1"),
    "I8": np.dtype("|i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_ST_NAME_BY_DTYPE = {dt.str: name for name, dt in ST_DTYPES.items()}
SUPPORTED_DTYPES = ", ".join(str(dt) for dt in ST_DTYPES.values())


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the index: its dtype, shape and byte range in the data section."""

    name: str
    st_dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return ST_DTYPES[self.st_dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def name_problem(name: object) -> str | None:
    """Return why *name* is not a valid tensor name, or None if it is."""
    if not isinstance(name, str):
        return f"tensor names must be str, got {type(name).__name__}"
    if not name:
        return "tensor names must be non-empty"
    if name == RESERVED_NAME:
        return f"{RESERVED_NAME!r} is reserved by safetensors"
    if any(ord(ch) < 0x20 for ch in name):
        return f"tensor name {name[:80]!r} contains a NUL or other control character"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return f"tensor name {name[:80]!r} is not valid Unicode (lone surrogate)"
    if len(encoded) > MAX_NAME_BYTES:
        return (
            f"tensor name is {len(encoded)} bytes long (limit {MAX_NAME_BYTES}): {name[:40]!r}..."
        )
    return None


def canonical_array(name: str, value: object) -> np.ndarray:
    """Return *value* as a C-contiguous little-endian array of a supported dtype.

    Numpy scalars become 0-d arrays. Raises TypeError for non-arrays (masked
    arrays included) and unsupported dtypes (object, str, complex...).
    """
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"tensor {name!r} must be a numpy.ndarray, got {type(value).__name__}")
    dtype = value.dtype
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
        dtype = dtype.newbyteorder("<")
    if dtype.str not in _ST_NAME_BY_DTYPE:
        raise TypeError(
            f"tensor {name!r} has dtype {value.dtype} which checkpoints do not support "
            f"(supported: {SUPPORTED_DTYPES})"
        )
    arr = np.asarray(value).astype(dtype, copy=False)
    if dtype.kind == "b" and arr.size and int(arr.view(np.uint8).max()) > 1:
        arr = arr.view(np.uint8) != 0  # bool views of other bytes: store canonical 0/1
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    return arr


def plan(
    arrays: Mapping[str, np.ndarray | np.generic],
) -> tuple[list[TensorEntry], list[np.ndarray], bytes]:
    """Validate *arrays* and lay them out canonically.

    Returns (entries, canonical arrays in the same order, index bytes including
    the 8-byte length prefix). Raises TypeError/ValueError for bad input.
    """
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of str to numpy arrays, not {type(arrays)}")
    if len(arrays) > MAX_TENSORS:
        raise ValueError(f"{len(arrays)} tensors in one checkpoint (limit {MAX_TENSORS})")
    prepared: list[tuple[str, np.ndarray]] = []
    for name, value in arrays.items():
        problem = name_problem(name)
        if problem is not None:
            raise (TypeError if not isinstance(name, str) else ValueError)(problem)
        if isinstance(value, np.ndarray) and value.ndim > MAX_NDIM:
            raise ValueError(f"tensor {name!r} has {value.ndim} dimensions (limit {MAX_NDIM})")
        prepared.append((name, canonical_array(name, value)))
    prepared.sort(key=lambda item: (-item[1].dtype.itemsize, item[0]))
    entries: list[TensorEntry] = []
    offset = 0
    for name, arr in prepared:
        entries.append(
            TensorEntry(
                name=name,
                st_dtype=_ST_NAME_BY_DTYPE[arr.dtype.str],
                shape=tuple(int(d) for d in arr.shape),
                begin=offset,
                end=offset + arr.nbytes,
            )
        )
        offset += arr.nbytes
    return entries, [arr for _, arr in prepared], index_bytes(entries)


def index_bytes(entries: list[TensorEntry]) -> bytes:
    """Serialise *entries* (already in canonical order) with the 8-byte length prefix."""
    parts = [
        json.dumps(e.name, ensure_ascii=False)
        + ':{"dtype":"'
        + e.st_dtype
        + '","shape":['
        + ",".join(str(d) for d in e.shape)
        + '],"data_offsets":['
        + f"{e.begin},{e.end}"
        + "]}"
        for e in entries
    ]
    body = ("{" + ",".join(parts) + "}").encode("utf-8")
    body += b" " * (-len(body) % 8)
    if len(body) > MAX_INDEX_BYTES:
        raise ValueError(
            f"tensor index is {len(body)} bytes, above {MAX_INDEX_BYTES}; too many tensors"
        )
    return len(body).to_bytes(8, "little") + body


def parse_index(raw: bytes, data_len: int) -> list[TensorEntry]:
    """Validate the index JSON *raw* against a data section of *data_len* bytes.

    Returns the entries in data order. Raises FormatError naming the problem:
    invalid JSON, bad entries, dtype/shape not matching the byte range, offsets
    out of range, overlapping or leaving gaps, or a non-canonical encoding.
    """
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise FormatError("safetensors header must be a JSON object")
    if len(obj) > MAX_TENSORS:
        raise FormatError(f"checkpoint lists {len(obj)} tensors (limit {MAX_TENSORS})")
    if RESERVED_NAME in obj:
        raise FormatError(
            "safetensors header has __metadata__; fedstore keeps metadata in its own header"
        )
    entries = [_parse_entry(name, spec, data_len) for name, spec in obj.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    position = 0
    for entry in entries:
        if entry.begin < position:
            raise FormatError(
                f"tensor {entry.name!r} data offsets [{entry.begin}, {entry.end}) overlap the "
                f"previous tensor, which ends at {position}"
            )
        if entry.begin > position:
            raise FormatError(
                f"gap in tensor data: bytes [{position}, {entry.begin}) belong to no tensor"
            )
        position = entry.end
    if position != data_len:
        raise FormatError(
            f"tensor data section is {data_len} bytes but the tensors cover only {position}"
        )
    canonical = sorted(entries, key=lambda e: (-e.dtype.itemsize, e.name))
    if canonical != entries or index_bytes(entries)[8:] != raw:
        raise FormatError("safetensors header is valid but not in fedstore's canonical form")
    return entries


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"safetensors header repeats the key {key[:80]!r}")
        result[key] = value
    return result


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(name: str, spec: object, data_len: int) -> TensorEntry:
    problem = name_problem(name)
    if problem is not None:
        raise FormatError(f"safetensors header: {problem}")
    label = f"tensor {name[:80]!r}"
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{label}: entry must have exactly dtype, shape and data_offsets")
    st_dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(st_dtype, str) or st_dtype not in ST_DTYPES:
        raise FormatError(f"{label}: unsupported dtype {str(st_dtype)[:20]!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(_is_int(d) and 0 <= d <= MAX_ELEMENTS for d in shape)
    ):
        raise FormatError(f"{label}: shape must be a list of at most {MAX_NDIM} non-negative ints")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise FormatError(f"{label}: shape {shape} is absurdly large")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise FormatError(f"{label}: data_offsets must be a list of two ints")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise FormatError(
            f"{label}: data offsets [{begin}, {end}) are out of range for a "
            f"{data_len}-byte data section"
        )
    needed = math.prod(shape) * ST_DTYPES[st_dtype].itemsize
    if needed != end - begin:
        raise FormatError(
            f"{label}: dtype/shape mismatch: {st_dtype}{shape} needs {needed} bytes "
            f"but its data offsets span {end - begin}"
        )
    return TensorEntry(name=name, st_dtype=st_dtype, shape=tuple(shape), begin=begin, end=end)

"""The fixed fedstore container header that precedes the compressed body.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic  b"FSCK"
    4       1     format version (2 is written; 1 and 2 are read)
    5       1     codec id (1 = zstd)
    6       2     flags (bit 0: SHUFFLE; every other bit must be 0)
    8       8     raw size: bytes of the (shuffled) safetensors payload
    16      8     version 1: frame size F, bytes of the one zstd frame;
                  version 2: piece count P (see fedstore.format.pieces)
    24      4     metadata length M (at most MAX_METADATA_BYTES)
    28      M     metadata: canonical JSON object of str -> str
    28+M          the body; the blob ends exactly where it does:
                  version 1: one zstd frame of F bytes (fedstore.format.zstd_frame)
                  version 2: P pieces, each raw or one zstd frame (fedstore.format.pieces)

Canonical JSON means ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``; a blob whose metadata is not byte-identical to that
re-encoding is refused, so one checkpoint has exactly one encoding (and CID).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from fedstore.errors import ConfigError, FormatError

MAGIC = b"FSCK"
#: The version encode writes.
FORMAT_VERSION = 2
#: Every version decode reads (version 1: one zstd frame; version 2: pieces).
READ_VERSIONS = (1, 2)
CODEC_ZSTD = 1
CODEC_NAMES: dict[int, str] = {CODEC_ZSTD: "zstd"}
FLAG_SHUFFLE = 0x0001
KNOWN_FLAGS = FLAG_SHUFFLE

FIXED = struct.Struct("<4sBBHQQI")
FIXED_HEADER_SIZE = FIXED.size  # 28
MAX_METADATA_BYTES = 1 << 20

DEFAULT_MAX_DECODED_SIZE = 8 << 30
MAX_DECODED_SIZE_ENV = "FEDSTORE_MAX_CHECKPOINT_BYTES"

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class ContainerHeader:
    """The parsed and validated fixed header plus metadata of one blob."""

    version: int
    codec: int
    flags: int
    raw_size: int
    #: Field 16: the zstd frame's size in version 1, the piece count in version 2.
    body_field: int
    metadata: dict[str, str]
    body_offset: int


def canonical_metadata(metadata: Mapping[str, str] | None) -> bytes:
    """Validate *metadata* and return its canonical JSON encoding.

    Raises TypeError if it is not a mapping of str to str, ValueError if a key
    is empty or the encoding exceeds MAX_METADATA_BYTES.
    """
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str, not {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be str, got {type(key).__name__} ({key!r})")
        if not key:
            raise ValueError("metadata keys must be non-empty strings")
        if not isinstance(value, str):
            raise TypeError(
                f"metadata value for {key!r} must be str, got {type(value).__name__}; "
                "convert numbers and other values with str() first"
            )
    encoded = _dump_canonical(dict(metadata))
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(
            f"metadata encodes to {len(encoded)} bytes, above the {MAX_METADATA_BYTES} byte limit"
        )
    return encoded


def pack_header(
    *,
    flags: int,
    raw_size: int,
    body_field: int,
    metadata_json: bytes,
    version: int = FORMAT_VERSION,
) -> bytes:
    """Return the fixed header followed by the (already canonical) metadata JSON.

    *body_field* is the frame size for version 1, the piece count for version 2.
    """
    fixed = FIXED.pack(MAGIC, version, CODEC_ZSTD, flags, raw_size, body_field, len(metadata_json))
    return fixed + metadata_json


def parse_header(data: memoryview) -> ContainerHeader:
    """Parse and validate the container header of *data* (the whole blob).

    Checks magic, version, codec, flags, metadata, and (version 1) that the
    blob is exactly as long as the header says. Does not look inside the body.
    Raises FormatError with a message saying what is wrong.
    """
    size = len(data)
    if bytes(data[: len(MAGIC)]) != MAGIC[: min(size, len(MAGIC))] or size == 0:
        raise FormatError(f"not a fedstore checkpoint: {describe_foreign(bytes(data[:16]))}")
    if size < FIXED_HEADER_SIZE:
        raise FormatError(
            f"checkpoint is truncated: {size} bytes, shorter than the "
            f"{FIXED_HEADER_SIZE}-byte fedstore header"
        )
    _, version, codec, flags, raw_size, body_field, meta_len = FIXED.unpack_from(data)
    if version not in READ_VERSIONS:
        readable = " and ".join(str(v) for v in READ_VERSIONS)
        raise FormatError(
            f"unsupported checkpoint format version {version}; this fedstore reads versions "
            f"{readable} (upgrade fedstore to read newer checkpoints)"
        )
    if codec not in CODEC_NAMES:
        raise FormatError(f"unknown checkpoint codec id {codec}; known: {sorted(CODEC_NAMES)}")
    if flags & ~KNOWN_FLAGS:
        raise FormatError(
            f"checkpoint header has unknown flags 0x{flags & ~KNOWN_FLAGS:04x}; "
            "it was written by a newer or foreign encoder"
        )
    if meta_len > MAX_METADATA_BYTES:
        raise FormatError(
            f"checkpoint header declares {meta_len} bytes of metadata, above the "
            f"{MAX_METADATA_BYTES} byte limit"
        )
    expected = FIXED_HEADER_SIZE + meta_len + (body_field if version == 1 else 0)
    if size < expected:
        raise FormatError(
            f"checkpoint is truncated: header declares {expected} bytes in all, got {size}"
        )
    if size > expected and version == 1:
        raise FormatError(
            f"checkpoint has {size - expected} unexpected trailing bytes after its zstd frame "
            f"(header declares {expected} bytes in all)"
        )
    if raw_size < 8:
        raise FormatError(f"checkpoint header declares a raw size of {raw_size} bytes (minimum 8)")
    metadata = _parse_metadata(bytes(data[FIXED_HEADER_SIZE : FIXED_HEADER_SIZE + meta_len]))
    return ContainerHeader(
        version=version,
        codec=codec,
        flags=flags,
        raw_size=raw_size,
        body_field=body_field,
        metadata=metadata,
        body_offset=FIXED_HEADER_SIZE + meta_len,
    )


def resolve_max_decoded_size(value: int | None) -> int:
    """Return the decode cap: *value*, else $FEDSTORE_MAX_CHECKPOINT_BYTES, else 8 GiB."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"max_decoded_size must be a non-negative int, got {value!r}")
        return value
    env = os.environ.get(MAX_DECODED_SIZE_ENV)
    if env is None or not env.strip():
        return DEFAULT_MAX_DECODED_SIZE
    try:
        parsed = int(env.strip())
    except ValueError:
        parsed = -1
    if parsed < 0:
        raise ConfigError(
            f"{MAX_DECODED_SIZE_ENV}={env!r} is not a non-negative integer number of bytes"
        )
    return parsed


def describe_foreign(prefix: bytes) -> str:
    """Say what *prefix* (the first bytes of a blob) looks like, for error messages."""
    if not prefix:
        return "the data is empty"
    if prefix[:1] == b"\x80" and len(prefix) > 1 and 2 <= prefix[1] <= 5:
        return (
            f"it looks like a Python pickle (protocol {prefix[1]}); fedstore never unpickles "
            "data. Save the weights as .npz or .safetensors and encode those"
        )
    if prefix[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return (
            "it looks like a zip archive (.npz); load it with "
            "fedstore.format.weight_files.load_weights_file and encode the arrays"
        )
    if prefix[:6] == b"\x93NUMPY":
        return "it looks like a .npy array file, not a checkpoint"
    if prefix[:4] == _ZSTD_MAGIC:
        return "it is a bare zstd frame without the fedstore header"
    if len(prefix) >= 9 and prefix[8:9] == b"{":
        return (
            "it looks like a plain .safetensors file; use fedstore.format.weight_files to load it"
        )
    if MAGIC.startswith(prefix[:4]):
        return f"only {len(prefix)} bytes, shorter than the fedstore magic"
    return f"wrong magic (first bytes {prefix[:8].hex()}, expected {MAGIC.hex()} {MAGIC!r})"


def _dump_canonical(obj: dict[str, str]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _parse_metadata(raw: bytes) -> dict[str, str]:
    try:
        obj = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"checkpoint metadata is not valid canonical JSON: {exc}") from exc
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in obj.items()
    ):
        raise FormatError("checkpoint metadata must be a JSON object of non-empty str to str")
    if _dump_canonical(obj) != raw:
        raise FormatError(
            "checkpoint metadata is not in canonical form (sorted keys, compact separators, "
            "ASCII escapes, no duplicates)"
        )
    return obj

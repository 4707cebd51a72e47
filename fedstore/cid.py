"""IPFS CIDs identical to Kubo's ``ipfs add --only-hash``, computed in a stream.

Quick use::

    from fedstore.cid import cid_of_bytes, cid_of_file, parse_cid, verify_bytes

    cid_of_bytes(b"hello\\n")                  # 'QmZULkCE...' (Kubo default, CIDv0)
    cid_of_bytes(b"hello\\n", cid_version=1)   # 'bafkrei...' (ipfs add --cid-version=1)
    cid_of_file("model.fsc", params=DagParams.profile("unixfs-v1-2025"))
    verify_bytes(cid, data)                     # raises IntegrityError on mismatch

A file is cut into fixed-size chunks; each chunk becomes a leaf block (a dag-pb
UnixFS File node, or the raw bytes with ``raw_leaves``), and the leaves are
linked by Kubo's balanced layout (see :mod:`fedstore.unixfs` for the byte-exact
rules). :class:`DagParams` holds the knobs; ``DagParams.profile()`` names the
common ones: ``kubo`` (``ipfs add`` defaults, v0 or v1) and IPIP-499's
``unixfs-v1-2025`` (1 MiB chunks, 1024 links, raw leaves, CIDv1).

CID strings: v0 is base58btc of the sha2-256 multihash (``Qm...``); v1 is ``b``
plus unpadded lowercase base32 of ``0x01 <codec> <multihash>``. Only sha2-256
with the dag-pb (0x70) and raw (0x55) codecs is supported: those are the CIDs
``ipfs add`` makes. Everything else is an :class:`~fedstore.errors.InvalidCIDError`.

Pure module: no trio, no I/O apart from :func:`cid_of_file` reading its file.
Hashing runs at the speed of ``hashlib`` (OpenSSL); callers in async code run
it in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from fedstore.errors import (
    ConfigError,
    FormatError,
    IntegrityError,
    InvalidCIDError,
    SizeLimitError,
)
from fedstore.unixfs import (
    CODEC_DAG_PB,
    CODEC_RAW,
    MH_SHA2_256,
    SHA256_LEN,
    BytesLike,
    Link,
    TreeNode,
    balanced_layout,
    binary_cid,
    decode_varint,
    hash_leaf,
    leaf_envelope,
)

__all__ = [
    "CODEC_DAG_PB",
    "CODEC_RAW",
    "PROFILES",
    "BuiltDag",
    "CidBuilder",
    "CidVerifier",
    "DagParams",
    "ParsedCid",
    "build_file_dag",
    "cid_from_bytes",
    "cid_of_bytes",
    "cid_of_file",
    "cid_to_bytes",
    "cid_to_str",
    "parse_cid",
    "read_binary_cid",
    "verify_bytes",
]

#: Largest chunk accepted: bitswap refuses blocks over 2 MiB.
MAX_CHUNK_SIZE = 2 * 1024 * 1024
#: Longest CID string parse_cid looks at (a sha2-256 CIDv1 in base32 is 59 chars).
MAX_CID_STR_LEN = 200
#: Bytes read per call by cid_of_file (rounded to a whole number of chunks).
READ_BLOCK = 1024 * 1024  # measured a little faster than 4 MiB (stays in cache)

#: Profile names accepted by DagParams.profile and the CLI.
PROFILES = ("kubo", "unixfs-v0-2015", "unixfs-v1-2025")


@dataclass(frozen=True, slots=True)
class DagParams:
    """How a file is turned into a DAG. The defaults are ``ipfs add``'s.

    ``raw_leaves=None`` means "as Kubo": on for CIDv1, off for CIDv0, and is
    resolved at construction, so ``DagParams(1) == DagParams(1, raw_leaves=True)``.
    Raises :class:`~fedstore.errors.ConfigError` for values Kubo would refuse.
    """

    cid_version: int = 0
    chunk_size: int = 262144
    max_links: int = 174
    raw_leaves: bool | None = None

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise ConfigError(f"cid_version must be 0 or 1, not {self.cid_version!r}")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(
                f"chunk_size must be between 1 and {MAX_CHUNK_SIZE} bytes, not {self.chunk_size}"
            )
        if not 2 <= self.max_links <= 65536:
            raise ConfigError(f"max_links must be between 2 and 65536, not {self.max_links}")
        if self.raw_leaves is None:
            object.__setattr__(self, "raw_leaves", self.cid_version == 1)

    @property
    def leaves_raw(self) -> bool:
        """``raw_leaves`` as a plain bool (it is never None after construction)."""
        return bool(self.raw_leaves)

    @classmethod
    def kubo(cls, cid_version: int = 0) -> DagParams:
        """``ipfs add`` defaults (``--cid-version=1`` turns raw leaves on)."""
        return cls(cid_version=cid_version)

    @classmethod
    def unixfs_v1_2025(cls) -> DagParams:
        """IPIP-499 ``unixfs-v1-2025``: CIDv1, raw leaves, 1 MiB chunks, 1024 links."""
        return cls(cid_version=1, chunk_size=1048576, max_links=1024, raw_leaves=True)

    @classmethod
    def profile(cls, name: str, cid_version: int | None = None) -> DagParams:
        """Params for a named profile (see :data:`PROFILES`).

        ``kubo`` takes ``cid_version`` (default 0); ``unixfs-v0-2015`` is Kubo's
        v0 default; ``unixfs-v1-2025`` is CIDv1 only.
        """
        if name == "kubo":
            return cls.kubo(0 if cid_version is None else cid_version)
        if name == "unixfs-v0-2015":
            if cid_version not in (None, 0):
                raise ConfigError("profile unixfs-v0-2015 makes CIDv0 only")
            return cls.kubo(0)
        if name == "unixfs-v1-2025":
            if cid_version not in (None, 1):
                raise ConfigError("profile unixfs-v1-2025 makes CIDv1 only")
            return cls.unixfs_v1_2025()
        raise ConfigError(f"unknown DAG profile {name!r}; choose one of {', '.join(PROFILES)}")

    def describe(self) -> str:
        """Short human description, e.g. ``v1/256KiB/174 links/raw leaves``."""
        size = self.chunk_size
        size_txt = f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"
        leaves = "raw leaves" if self.leaves_raw else "dag-pb leaves"
        return f"v{self.cid_version}/{size_txt}/{self.max_links} links/{leaves}"


def _resolve_params(cid_version: int, params: DagParams | None) -> DagParams:
    if params is None:
        return DagParams.kubo(cid_version)
    return params


# --------------------------------------------------------------------------- CID strings

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B32_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def _b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    out: list[str] = []
    while num:
        num, rem = divmod(num, 58)
        out.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    num = 0
    for ch in text:
        idx = _B58_INDEX.get(ch)
        if idx is None:
            raise InvalidCIDError(f"character {ch!r} is not base58btc")
        num = num * 58 + idx
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def _b32decode(text: str) -> bytes:
    lower = text.lower()
    if text not in (lower, text.upper()) or not set(lower) <= _B32_CHARS:
        raise InvalidCIDError("not valid base32 (RFC 4648, no padding)")
    if len(lower) % 8 in (1, 3, 6):
        raise InvalidCIDError("base32 text has an impossible length")
    try:
        data = base64.b32decode(lower.upper() + "=" * (-len(lower) % 8))
    except binascii.Error as exc:
        raise InvalidCIDError(f"not valid base32: {exc}") from exc
    if _b32encode(data) != lower:
        raise InvalidCIDError("base32 text is not canonical (non-zero trailing bits)")
    return data


@dataclass(frozen=True, slots=True)
class ParsedCid:
    """A CID fedstore understands: sha2-256, codec dag-pb (0x70) or raw (0x55).

    ``str()`` gives the canonical string (``Qm...`` for v0, ``b...`` base32 for
    v1); ``bytes()`` the binary form used in CARs and bitswap.
    """

    version: int
    codec: int
    digest: bytes
    multihash: bytes

    DAG_PB: ClassVar[int] = CODEC_DAG_PB
    RAW: ClassVar[int] = CODEC_RAW

    def __bytes__(self) -> bytes:
        return binary_cid(self.version, self.codec, self.digest)

    def __str__(self) -> str:
        return cid_to_str(bytes(self))

    def to_v1(self) -> ParsedCid:
        """The same block addressed by a CIDv1."""
        return ParsedCid(1, self.codec, self.digest, self.multihash)

    def same_block(self, other: ParsedCid) -> bool:
        """True when both address the same block (a v0 and its v1 form do)."""
        return self.codec == other.codec and self.multihash == other.multihash


def read_binary_cid(buf: BytesLike, pos: int = 0) -> tuple[ParsedCid, int]:
    """Decode a binary CID at ``buf[pos:]``; return it and the position after it."""
    if len(buf) - pos >= 2 and buf[pos] == MH_SHA2_256 and buf[pos + 1] == SHA256_LEN:
        end = pos + 2 + SHA256_LEN
        if end > len(buf):
            raise InvalidCIDError("truncated CIDv0: a sha2-256 multihash needs 34 bytes")
        digest = bytes(buf[pos + 2 : end])
        return ParsedCid(0, CODEC_DAG_PB, digest, b"\x12\x20" + digest), end
    try:
        version, p = decode_varint(buf, pos)
        if version != 1:
            raise InvalidCIDError(f"unsupported CID version {version} (expected 0 or 1)")
        codec, p = decode_varint(buf, p)
        if codec not in (CODEC_DAG_PB, CODEC_RAW):
            raise InvalidCIDError(
                f"unsupported codec 0x{codec:x} (fedstore handles dag-pb 0x70 and raw 0x55)"
            )
        mh_code, p = decode_varint(buf, p)
        mh_len, p = decode_varint(buf, p)
    except FormatError as exc:  # truncated or overlong varint
        raise InvalidCIDError(f"malformed binary CID: {exc}") from exc
    if mh_code != MH_SHA2_256:
        raise InvalidCIDError(f"unsupported hash function 0x{mh_code:x} (only sha2-256)")
    if mh_len != SHA256_LEN:
        raise InvalidCIDError(f"wrong sha2-256 digest length {mh_len} (expected 32)")
    if p + SHA256_LEN > len(buf):
        raise InvalidCIDError("truncated CID: digest shorter than 32 bytes")
    digest = bytes(buf[p : p + SHA256_LEN])
    return ParsedCid(1, codec, digest, b"\x12\x20" + digest), p + SHA256_LEN


def cid_from_bytes(data: BytesLike) -> ParsedCid:
    """Parse a binary CID that must fill ``data`` exactly."""
    parsed, end = read_binary_cid(data, 0)
    if end != len(data):
        raise InvalidCIDError(f"{len(data) - end} unexpected bytes after the CID")
    return parsed


def cid_to_str(cid: BytesLike) -> str:
    """String form of a binary CID: base58btc for v0, ``b`` + base32 for v1."""
    raw = bytes(cid)
    if raw[:2] == b"\x12\x20":
        return _b58encode(raw)
    return "b" + _b32encode(raw)


def parse_cid(text: str) -> ParsedCid:
    """Parse a CID string, raising :class:`InvalidCIDError` for anything else.

    Accepts ``Qm...`` (v0, base58btc) and multibase v1 strings in base32
    (``b``/``B``), base58btc (``z``) and base16 (``f``/``F``). Surrounding
    whitespace is ignored.
    """
    if not isinstance(text, str):
        raise InvalidCIDError(f"a CID must be a string, not {type(text).__name__}")
    s = text.strip()
    if not s:
        raise InvalidCIDError("empty CID")
    if len(s) > MAX_CID_STR_LEN:
        raise InvalidCIDError(f"CID too long ({len(s)} characters, at most {MAX_CID_STR_LEN})")
    shown = s if len(s) <= 64 else s[:61] + "..."
    try:
        if len(s) == 46 and s.startswith("Qm"):
            raw = _b58decode(s)
            if len(raw) != 34 or raw[:2] != b"\x12\x20":
                raise InvalidCIDError("not a sha2-256 CIDv0")
            return cid_from_bytes(raw)
        prefix, body = s[0], s[1:]
        if not body:
            raise InvalidCIDError("nothing after the multibase prefix")
        if prefix in "bB":
            raw = _b32decode(body)
        elif prefix == "z":
            raw = _b58decode(body)
            if _b58encode(raw) != body:
                raise InvalidCIDError("base58 text is not canonical")
        elif prefix in "fF":
            if body not in (body.lower(), body.upper()) or len(body) % 2:
                raise InvalidCIDError("not valid base16")
            try:
                raw = bytes.fromhex(body)
            except ValueError as exc:
                raise InvalidCIDError("not valid base16") from exc
        elif s.startswith("Qm"):
            raise InvalidCIDError(f"a CIDv0 has 46 characters, this one has {len(s)}")
        else:
            raise InvalidCIDError(
                f"unsupported multibase prefix {prefix!r} "
                "(expected a 'Qm...' CIDv0 or a base32 'b...' CIDv1)"
            )
        return cid_from_bytes(raw)
    except InvalidCIDError as exc:
        raise InvalidCIDError(f"invalid CID {shown!r}: {exc}") from None


def cid_to_bytes(cid: str | ParsedCid) -> bytes:
    """Binary form of a CID string (or a ParsedCid)."""
    parsed = cid if isinstance(cid, ParsedCid) else parse_cid(cid)
    return bytes(parsed)


# --------------------------------------------------------------------------- building


@dataclass(frozen=True, slots=True)
class BuiltDag:
    """A finished DAG: the root link, the tree (int 0 when the root is the only
    leaf) and the leaf links in file order. Leaf i holds file bytes
    ``[i*chunk_size, i*chunk_size + leaves[i].filesize)``."""

    params: DagParams
    root: Link
    tree: TreeNode | int
    leaves: Sequence[Link]

    @property
    def cid(self) -> str:
        return cid_to_str(self.root.cid)


class CidBuilder:
    """Streaming CID computation: feed bytes with :meth:`update`, then :meth:`finalize`.

    ``update`` takes pieces of any size; at most one partial chunk is buffered
    and whole chunks are hashed in place. Only per-leaf link info (binary CID,
    Tsize, file size: about 100 bytes per chunk) is kept; the tree is built at
    :meth:`finalize`, after which ``update`` raises RuntimeError.
    """

    __slots__ = ("_buf", "_dag", "_full_env", "_leaves", "_size", "params")

    def __init__(self, params: DagParams | int = 0) -> None:
        self.params = params if isinstance(params, DagParams) else DagParams.kubo(params)
        self._buf = bytearray()
        self._leaves: list[Link] = []
        self._size = 0
        self._dag: BuiltDag | None = None
        self._full_env = None if self.params.leaves_raw else leaf_envelope(self.params.chunk_size)

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def _leaf(self, chunk: BytesLike) -> None:
        p = self.params
        env = self._full_env if len(chunk) == p.chunk_size else None
        self._leaves.append(
            hash_leaf(chunk, raw=p.leaves_raw, cid_version=p.cid_version, envelope=env)
        )

    def update(self, data: BytesLike) -> None:
        """Feed the next bytes of the file (bytes, bytearray or memoryview)."""
        if self._dag is not None:
            raise RuntimeError("CidBuilder.update() called after finalize()")
        mv = memoryview(data)
        if mv.itemsize != 1 or mv.ndim != 1:
            mv = mv.cast("B")
        self._size += len(mv)
        cs = self.params.chunk_size
        buf = self._buf
        if buf:
            take = cs - len(buf)
            buf += mv[:take]
            mv = mv[take:]
            if len(buf) < cs:
                return
            self._leaf(buf)
            buf.clear()
        while len(mv) >= cs:
            self._leaf(mv[:cs])
            mv = mv[cs:]
        if mv:
            buf += mv

    def build(self) -> BuiltDag:
        """Finish and return the whole DAG description (idempotent)."""
        if self._dag is None:
            if self._buf or not self._leaves:
                self._leaf(self._buf)
                self._buf = bytearray()
            root, tree = balanced_layout(
                self._leaves, max_links=self.params.max_links, cid_version=self.params.cid_version
            )
            self._dag = BuiltDag(self.params, root, tree, self._leaves)
        return self._dag

    def finalize(self) -> str:
        """Finish and return the CID string (idempotent)."""
        return self.build().cid


def cid_of_bytes(data: BytesLike, cid_version: int = 0, *, params: DagParams | None = None) -> str:
    """CID of ``data`` as ``ipfs add`` computes it (``params`` overrides ``cid_version``)."""
    builder = CidBuilder(_resolve_params(cid_version, params))
    builder.update(data)
    return builder.finalize()


def _read_block_size(chunk_size: int) -> int:
    return max(1, READ_BLOCK // chunk_size) * chunk_size


def build_file_dag(
    path: str | os.PathLike[str],
    params: DagParams,
    progress: Callable[[int], object] | None = None,
) -> BuiltDag:
    """Read ``path`` once in chunk-aligned blocks and return its :class:`BuiltDag`."""
    builder = CidBuilder(params)
    buf = bytearray(_read_block_size(params.chunk_size))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            builder.update(view[:n])
            if progress is not None:
                progress(builder.size)
    return builder.build()


def cid_of_file(
    path: str | os.PathLike[str],
    cid_version: int = 0,
    *,
    params: DagParams | None = None,
    progress: Callable[[int], object] | None = None,
) -> str:
    """CID of the file at ``path``, read in 1 MiB blocks (memory stays bounded).

    ``progress``, if given, is called after each block with the total number of
    bytes hashed so far. OS errors (missing file, permissions) propagate as
    :class:`OSError`.
    """
    return build_file_dag(path, _resolve_params(cid_version, params), progress).cid


# --------------------------------------------------------------------------- verification


def _candidates_for(parsed: ParsedCid) -> list[DagParams]:
    if parsed.version == 0:
        return [DagParams.kubo(0)]
    return [DagParams.kubo(1), DagParams.unixfs_v1_2025()]


class CidVerifier:
    """Check that streamed bytes are the file a CID names.

    * v0 CIDs are checked with Kubo's v0 defaults.
    * v1 dag-pb CIDs (``bafy...``) are checked against every candidate profile
      at once (Kubo ``--cid-version=1`` and ``unixfs-v1-2025``), so either matches.
    * v1 raw CIDs (``bafk...``) address one block: the sha2-256 of all bytes.

    ``params`` replaces the candidate list for dag-pb CIDs. ``max_size`` makes
    :meth:`update` raise :class:`SizeLimitError` as soon as more bytes arrive.
    """

    def __init__(
        self,
        cid: str | ParsedCid,
        *,
        max_size: int | None = None,
        params: DagParams | Sequence[DagParams] | None = None,
    ) -> None:
        self.cid = cid if isinstance(cid, ParsedCid) else parse_cid(cid)
        self.max_size = max_size
        self._size = 0
        self._raw_hash: hashlib._Hash | None = None
        self._builders: list[CidBuilder] = []
        self.matched_params: DagParams | None = None
        if self.cid.codec == CODEC_RAW:
            self._raw_hash = hashlib.sha256()
        else:
            if params is None:
                cands = _candidates_for(self.cid)
            elif isinstance(params, DagParams):
                cands = [params]
            else:
                cands = list(params)
            self._builders = [CidBuilder(p) for p in cands]

    @property
    def size(self) -> int:
        """Bytes seen so far."""
        return self._size

    def update(self, data: BytesLike) -> None:
        """Feed the next piece of the data."""
        n = memoryview(data).nbytes
        if self.max_size is not None and self._size + n > self.max_size:
            raise SizeLimitError(
                f"data for {self.cid} exceeds the size limit of {self.max_size} bytes"
            )
        self._size += n
        if self._raw_hash is not None:
            self._raw_hash.update(data)
        for b in self._builders:
            b.update(data)

    def verify(self) -> None:
        """Raise :class:`IntegrityError` unless the bytes fed hash to the CID."""
        if self._raw_hash is not None:
            got = self._raw_hash.digest()
            if got == self.cid.digest:
                return
            computed = [cid_to_str(binary_cid(1, CODEC_RAW, got))]
        else:
            computed = []
            for b in self._builders:
                root = b.build().root.cid
                if root == bytes(self.cid):
                    self.matched_params = b.params
                    return
                computed.append(f"{cid_to_str(root)} ({b.params.describe()})")
        raise IntegrityError(
            f"data does not match CID {self.cid}: {self._size} bytes hash to " + ", ".join(computed)
        )


def verify_bytes(
    cid: str | ParsedCid, data: BytesLike, *, params: DagParams | Sequence[DagParams] | None = None
) -> None:
    """Raise :class:`IntegrityError` unless ``data`` is the content of ``cid``."""
    verifier = CidVerifier(cid, params=params)
    verifier.update(data)
    verifier.verify()

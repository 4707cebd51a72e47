"""IPFS CIDs identical to Kubo's ``ipfs add --only-hash``, computed in a stream.

Quick use::

    from fedstore.ipld.cid import cid_of_bytes, cid_of_file, parse_cid, verify_bytes

    cid_of_bytes(b"hello\\n")                  # 'QmZULkCE...' (Kubo default, CIDv0)
    cid_of_bytes(b"hello\\n", cid_version=1)   # 'bafkrei...' (ipfs add --cid-version=1)
    cid_of_file("model.fsc", params=DagParams.profile("unixfs-v1-2025"))
    verify_bytes(cid, data)                     # raises IntegrityError on mismatch

A file is cut into fixed-size chunks; each chunk becomes a leaf block (a dag-pb
UnixFS File node, or the raw bytes with ``raw_leaves``), and the leaves are
linked by Kubo's balanced layout (see :mod:`fedstore.ipld.unixfs` for the byte-exact
rules). :class:`DagParams` holds the knobs; ``DagParams.profile()`` names the
common ones: ``kubo`` (``ipfs add`` defaults, v0 or v1) and IPIP-499's
``unixfs-v1-2025`` (1 MiB chunks, 1024 links, raw leaves, CIDv1).

CID strings: v0 is base58btc of the sha2-256 multihash (``Qm...``); v1 is ``b``
plus unpadded lowercase base32 of ``0x01 <codec> <multihash>``. Only sha2-256
with the dag-pb (0x70) and raw (0x55) codecs is supported: those are the CIDs
``ipfs add`` makes. Everything else is an :class:`~fedstore.errors.InvalidCIDError`.
Parsing and printing live in :mod:`fedstore.ipld.cidstr`; this module re-exports
them (``from fedstore.ipld.cid import parse_cid`` works).

Pure module: no trio, no I/O apart from :func:`cid_of_file` reading its file.
Hashing runs at the speed of ``hashlib`` (OpenSSL); a large update hashes its
chunks on a few worker threads (leaves are independent; their order, and so
the CID, is unchanged). Callers in async code run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fedstore.errors import ConfigError, IntegrityError, SizeLimitError
from fedstore.ipld.cidstr import (
    MAX_CID_STR_LEN,
    ParsedCid,
    cid_from_bytes,
    cid_to_bytes,
    cid_to_str,
    parse_cid,
    read_binary_cid,
)
from fedstore.ipld.unixfs import (
    CODEC_DAG_PB,
    CODEC_RAW,
    BytesLike,
    Link,
    TreeNode,
    balanced_layout,
    binary_cid,
    hash_leaf,
    leaf_envelope,
)

__all__ = [
    "CODEC_DAG_PB",
    "CODEC_RAW",
    "MAX_CID_STR_LEN",
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
#: Bytes read per call by cid_of_file (rounded to a whole number of chunks).
READ_BLOCK = 1024 * 1024  # measured a little faster than 4 MiB (stays in cache)

#: An update holding at least this many whole chunks hashes them on worker threads.
_PARALLEL_LEAVES = 8
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _hash_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _hash_pool() -> ThreadPoolExecutor:
    """Threads for leaf hashing: the leaves of a file are independent, their order is kept."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_hash_threads(), thread_name_prefix="fedstore-cid")
        return _pool


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
        whole = len(mv) // cs
        if whole >= _PARALLEL_LEAVES and _hash_threads() > 1:
            self._leaves_parallel(mv[: whole * cs])
            mv = mv[whole * cs :]
        while len(mv) >= cs:
            self._leaf(mv[:cs])
            mv = mv[cs:]
        if mv:
            buf += mv

    def _leaves_parallel(self, mv: memoryview) -> None:
        """Hash the whole chunks of *mv* on worker threads (hashlib drops the GIL)."""
        p = self.params
        cs = p.chunk_size
        env = self._full_env

        def leaf(start: int) -> Link:
            chunk = mv[start : start + cs]
            return hash_leaf(chunk, raw=p.leaves_raw, cid_version=p.cid_version, envelope=env)

        self._leaves.extend(_hash_pool().map(leaf, range(0, len(mv), cs)))

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

"""A filesystem block store: IPFS blocks by their sha2-256 digest, plus "complete file" marks.

Layout under the store's root (a node puts it in ``<data dir>/blocks``)::

    objects/<2 hex>/<64 hex>   one block, named by the sha2-256 of its bytes
    roots/<64 hex>             a complete file DAG is here: JSON {"cid", "size", "blocks"}
    pins/<64 hex>              this file is kept: JSON {"cid", "digests"} (digests cached
                               by the collector, :mod:`fedstore_bitswap.collect`)
    tmp/                       in-flight writes (same filesystem: rename is atomic)

Blocks are keyed by digest, not by CID: a CIDv0 and a CIDv1 of the same
dag-pb block, or a raw CIDv1 and the block it names, are the same bytes and
share one file. Every write checks the digest first (a caller can never store
bytes under a name they do not hash to); reads re-check it by default
(``verify_reads``), and a block that no longer matches is deleted and reported
missing, so a damaged disk never makes a peer serve garbage.

A ``roots`` mark is written only after every block of a file's DAG is present
(:meth:`BlockStore.put_file` does it after writing them, a network fetch after
the last block arrived): :meth:`BlockStore.has_file` answers from the mark
alone. Partial DAGs are fine too: any block present can be served.

A ``pins`` mark says the file is *kept* (the backend's ``add`` and ``pin``
set it, ``unpin`` clears it); everything else (files fetched from peers,
payloads added as transient, partial DAGs) is a cache the collector empties
after a while and keeps under a byte budget. A store created before pins
existed gets a pin for every complete file it holds when it is first opened.

This module is synchronous and thread-safe (atomic renames, no shared mutable
state apart from the filesystem); async callers run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedstore.errors import FormatError, IntegrityError, NotFoundError
from fedstore.fsutil import write_atomic
from fedstore.ipld.blocks import DagSummary, decode_block, write_dag_blocks
from fedstore.ipld.cid import DagParams, ParsedCid, parse_cid
from fedstore.ipld.unixfs import BytesLike

__all__ = ["BlockStore", "FileMark", "digest_of"]

#: Largest block accepted (the bitswap spec's limit).
MAX_BLOCK_SIZE = 2 * 1024 * 1024
#: Deepest DAG walked (Kubo's balanced layout reaches depth 4 at ~200 TB).
MAX_DEPTH = 32


def digest_of(cid: str | bytes | ParsedCid) -> bytes:
    """The sha2-256 digest a CID (string, binary or parsed) names."""
    if isinstance(cid, ParsedCid):
        return cid.digest
    if isinstance(cid, bytes):
        if len(cid) < 34:
            raise ValueError("binary CID too short")
        return cid[-32:]
    return parse_cid(cid).digest


@dataclass(frozen=True, slots=True)
class FileMark:
    """A complete file DAG held by the store."""

    cid: str
    size: int
    blocks: int


class BlockStore:
    """Blocks on disk by digest (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, verify_reads: bool = True) -> None:
        self.root = Path(root)
        self.verify_reads = verify_reads
        self._objects = self.root / "objects"
        self._roots = self.root / "roots"
        self._tmp = self.root / "tmp"
        self._pins = self.root / "pins"
        upgrade = self.root.is_dir() and not self._pins.is_dir()
        for d in (self._objects, self._roots, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        if upgrade:  # a store from before pins: keep everything it holds
            tmp_pins = self.root / "pins.new"
            tmp_pins.mkdir(exist_ok=True)
            for mark in self.files():
                (tmp_pins / digest_of(mark.cid).hex()).write_text(json.dumps({"cid": mark.cid}))
            os.replace(tmp_pins, self._pins)
        self._pins.mkdir(exist_ok=True)
        self._objects_str = str(self._objects)
        self._tmp_str = str(self._tmp)
        self._made_dirs: set[str] = set()
        self._tmp_names = itertools.count()

    def __repr__(self) -> str:
        return f"<BlockStore root={str(self.root)!r}>"

    # -- single blocks -------------------------------------------------------------------

    def _path(self, digest: bytes) -> Path:
        return Path(self._spath(digest))

    def _spath(self, digest: bytes) -> str:
        if len(digest) != 32:
            raise ValueError("a sha2-256 digest has 32 bytes")
        h = digest.hex()
        return f"{self._objects_str}/{h[:2]}/{h}"

    def has_block(self, digest: bytes) -> bool:
        return os.path.isfile(self._spath(digest))

    def block_size(self, digest: bytes) -> int | None:
        """Size of a stored block, or None when absent."""
        try:
            return os.stat(self._spath(digest)).st_size
        except FileNotFoundError:
            return None

    def get_block(self, digest: bytes) -> bytes | None:
        """The block's bytes, or None when absent (or found damaged and removed)."""
        path = self._spath(digest)
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read(MAX_BLOCK_SIZE + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_BLOCK_SIZE or (
            self.verify_reads and hashlib.sha256(data).digest() != digest
        ):
            self._unlink(Path(path))
            return None
        return data

    def put_block(self, digest: bytes, data: BytesLike) -> bool:
        """Store *data* under *digest*; return False when it was already there.

        Raises :class:`IntegrityError` when *data* does not hash to *digest*
        and ValueError for blocks above 2 MiB.
        """
        if len(data) > MAX_BLOCK_SIZE:
            raise ValueError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        if hashlib.sha256(data).digest() != digest:
            raise IntegrityError(f"block does not hash to {digest.hex()}; not stored")
        return self._write_verified(digest, data)

    def put_hashed(self, digest: bytes, data: BytesLike) -> bool:
        """Like :meth:`put_block` for data the caller has *just* hashed to *digest*.

        Skips the second sha2-256 pass; only for callers that computed
        ``digest`` from these very bytes (the bitswap receive path).
        """
        if len(data) > MAX_BLOCK_SIZE:
            raise ValueError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        return self._write_verified(digest, data)

    def _write_verified(self, digest: bytes, data: BytesLike) -> bool:
        """Write a block whose digest the caller checked: temporary file, then rename.

        Not fsync'd (a block lost in a crash is fetched again; reads verify).
        The temporary name is unique per process and thread, so no random
        name (``mkstemp``) is needed.
        """
        path = self._spath(digest)
        if os.path.isfile(path):
            return False
        parent = path[:-65]
        if parent not in self._made_dirs:
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            tmp = (
                f"{self._tmp_str}/blk-{os.getpid()}-{threading.get_ident()}-{next(self._tmp_names)}"
            )
            try:
                fd = os.open(tmp, flags, 0o600)
                break
            except FileExistsError:  # left by a crashed process with the same pid
                continue
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                view = memoryview(data)
                while view:
                    view = view[f.write(view) :]
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def delete_block(self, digest: bytes) -> None:
        self._unlink(self._path(digest))

    def count_blocks(self) -> int:
        return sum(1 for d in self._objects.iterdir() if d.is_dir() for _ in d.iterdir())

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    # -- whole files ---------------------------------------------------------------------

    def put_file(self, source: BytesLike | os.PathLike[str] | str, params: DagParams) -> DagSummary:
        """Store every block of *source*'s DAG (Kubo-identical CID), then mark it complete."""

        def sink(cid: bytes, block: bytes) -> None:
            self._write_verified(cid[-32:], block)  # hashed by write_dag_blocks already

        summary = write_dag_blocks(source, params, sink)
        self.mark_file(summary.cid, summary.size, summary.blocks)
        return summary

    def mark_file(self, cid: str, size: int, blocks: int) -> None:
        """Record that every block of *cid*'s DAG is present."""
        digest = digest_of(cid)
        body = json.dumps({"cid": cid, "size": size, "blocks": blocks}).encode()
        write_atomic(
            self._roots / digest.hex(),
            lambda f: f.write(body),
            tmp_dir=self._tmp,
            prefix="root-",
            suffix="",
            durable=False,
        )

    def unmark_file(self, cid: str) -> None:
        """Forget that *cid* is complete (its blocks stay until removed). Idempotent."""
        self._unlink(self._roots / digest_of(cid).hex())

    def file_mark(self, cid: str) -> FileMark | None:
        path = self._roots / digest_of(cid).hex()
        try:
            info = json.loads(path.read_text())
            return FileMark(str(info["cid"]), int(info["size"]), int(info["blocks"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            self._unlink(path)
            return None

    def has_file(self, cid: str) -> bool:
        """Whether the complete DAG of *cid* is marked present (InvalidCIDError for bad CIDs)."""
        return (self._roots / digest_of(cid).hex()).is_file()

    def files(self) -> list[FileMark]:
        out = []
        for p in sorted(self._roots.iterdir()):
            try:
                info = json.loads(p.read_text())
                out.append(FileMark(str(info["cid"]), int(info["size"]), int(info["blocks"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    # -- pins (kept files) -------------------------------------------------------------

    def pin_file(self, cid: str) -> None:
        """Keep *cid*'s file: the collector never removes its blocks. Idempotent."""
        path = self._pins / digest_of(cid).hex()
        if path.is_file():
            return
        body = json.dumps({"cid": cid}).encode()
        write_atomic(
            path,
            lambda f: f.write(body),
            tmp_dir=self._tmp,
            prefix="pin-",
            suffix="",
            durable=False,
        )

    def unpin_file(self, cid: str) -> None:
        """Stop keeping *cid*'s file (its blocks become collectable). Idempotent."""
        self._unlink(self._pins / digest_of(cid).hex())

    def is_pinned(self, cid: str) -> bool:
        return (self._pins / digest_of(cid).hex()).is_file()

    def pin_records(self) -> list[tuple[Path, dict[str, object]]]:
        """Every pin mark and its JSON (the collector caches digests there)."""
        out = []
        for p in sorted(self._pins.iterdir()):
            try:
                info = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and isinstance(info.get("cid"), str):
                out.append((p, info))
        return out

    def objects_dir(self) -> Path:
        """Where the blocks are (``objects/<2 hex>/<64 hex>``), for the collector."""
        return self._objects

    def roots_dir(self) -> Path:
        """Where the complete-file marks are, for the collector."""
        return self._roots

    def iter_file(self, cid: str | ParsedCid) -> Iterator[bytes]:
        """Yield the file bytes of a locally complete DAG, in order (depth-first walk).

        Raises :class:`NotFoundError` when a block is missing (the mark, if
        any, is then removed) and :class:`FormatError` for a DAG that is not
        a UnixFS file.
        """
        root = cid if isinstance(cid, ParsedCid) else parse_cid(cid)
        stack: list[tuple[ParsedCid, int]] = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise FormatError(f"DAG under {root} is deeper than {MAX_DEPTH} levels")
            block = self.get_block(node.digest)
            if block is None:
                self.unmark_file(str(root))
                raise NotFoundError(f"block {node} of {root} is missing from the block store")
            decoded = decode_block(node, block)
            if decoded.data:
                yield decoded.data
            for link in reversed(decoded.links):
                stack.append((link.cid, depth + 1))

"""Garbage collection of the bitswap block store: what is not pinned is a bounded cache.

A node's block store holds two kinds of data. **Pinned** files (the
backend's ``add`` and ``pin``: the node's checkpoints, which peers fetch
from it) are kept until unpinned. Everything else is a **cache**: files
fetched from peers (payloads sent by reference, which the node has delivered
already), payloads added as transient, blocks of fetches that never
completed. Before this collector the cache was kept forever: references to
distinct 1 MiB blobs grew a node's store by 41 MiB in four minutes.

:func:`collect` (run by the backend every ``FEDSTORE_BITSWAP_GC_INTERVAL``
seconds, in a worker thread) works by mark and sweep:

1. **Live** blocks: every block of every pinned file (its digests are found
   by walking the DAG once and cached in the pin mark).
2. Complete-file marks of unpinned files older than ``grace`` seconds are
   removed (such a file is no longer offered whole).
3. Every other block older than ``grace`` is deleted, unless it belongs to
   an unpinned file still within its grace.
4. If the cache still holds more than ``max_cache_bytes``, its blocks go
   oldest first (and with them the marks of the young files they belong
   to) until it fits, sparing blocks younger than ``min_age`` seconds
   (a fetch may be writing them).

So the disk a node spends on what peers send it is at most ``max_cache_bytes``
plus what arrives within ``min_age``. Everything is synchronous file-system
work; the caller runs it in a worker thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fedstore.errors import FedstoreError
from fedstore.ipld.blocks import decode_block
from fedstore.ipld.cid import ParsedCid, parse_cid
from fedstore_bitswap.blockstore import MAX_DEPTH, BlockStore, digest_of

__all__ = ["CollectReport", "collect", "file_digests"]

#: Blocks younger than this are never collected, even over the budget (seconds).
MIN_AGE = 30.0


@dataclass
class CollectReport:
    """What one :func:`collect` run found and removed."""

    removed_blocks: int = 0
    removed_bytes: int = 0
    #: complete-file marks of unpinned files removed
    unmarked: list[str] = field(default_factory=list)
    #: bytes in blocks of pinned files (kept)
    pinned_bytes: int = 0
    #: bytes of cache left after the run
    cache_bytes: int = 0


def file_digests(store: BlockStore, cid: str | ParsedCid) -> set[bytes] | None:
    """Digests of every block of *cid*'s DAG, or None if a block is missing.

    Walks the DAG through the store (reads each block once; a damaged block
    counts as missing).
    """
    root = cid if isinstance(cid, ParsedCid) else parse_cid(cid)
    seen: set[bytes] = set()
    stack: list[tuple[ParsedCid, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if node.digest in seen:
            continue
        if depth > MAX_DEPTH:
            return None
        block = store.get_block(node.digest)
        if block is None:
            return None
        seen.add(node.digest)
        try:
            decoded = decode_block(node, block)
        except FedstoreError:
            return None
        stack.extend((link.cid, depth + 1) for link in decoded.links)
    return seen


def _pinned_digests(store: BlockStore) -> set[bytes]:
    live: set[bytes] = set()
    for path, info in store.pin_records():
        cached = info.get("digests")
        if isinstance(cached, list):
            live.update(bytes.fromhex(str(d)) for d in cached)
            continue
        cid = str(info["cid"])
        digests = file_digests(store, cid)
        if digests is None:  # not (yet) complete: keep what it has, look again next time
            live.add(digest_of(cid))
            live.update(_walkable(store, cid))
            continue
        live.update(digests)
        info["digests"] = sorted(d.hex() for d in digests)
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, path)
        except OSError:
            pass  # a cache: computed again next time
    return live


def _walkable(store: BlockStore, cid: str) -> set[bytes]:
    """Digests of the blocks of *cid*'s DAG that are present (a partial pinned file)."""
    root = parse_cid(cid)
    found: set[bytes] = set()
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if node.digest in found or depth > MAX_DEPTH:
            continue
        block = store.get_block(node.digest)
        if block is None:
            continue
        found.add(node.digest)
        try:
            decoded = decode_block(node, block)
        except FedstoreError:
            continue
        stack.extend((link.cid, depth + 1) for link in decoded.links)
    return found


def _marks(store: BlockStore) -> list[tuple[float, str]]:
    out = []
    for p in store.roots_dir().iterdir():
        try:
            info = json.loads(p.read_text())
            out.append((p.stat().st_mtime, str(info["cid"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _blocks(store: BlockStore) -> Iterable[tuple[bytes, float, int, str]]:
    """(digest, mtime, size, path) of every block file."""
    with os.scandir(store.objects_dir()) as dirs:
        for d in dirs:
            if not d.is_dir():
                continue
            with os.scandir(d.path) as files:
                for f in files:
                    if len(f.name) != 64:
                        continue
                    try:
                        st = f.stat()
                        digest = bytes.fromhex(f.name)
                    except (OSError, ValueError):
                        continue
                    yield digest, st.st_mtime, st.st_size, f.path


def collect(
    store: BlockStore,
    *,
    grace: float,
    max_cache_bytes: int,
    min_age: float = MIN_AGE,
    now: float | None = None,
) -> CollectReport:
    """Remove unpinned data older than *grace*, then keep the cache under *max_cache_bytes*."""
    when = time.time() if now is None else now
    report = CollectReport()
    live = _pinned_digests(store)
    pinned_roots = {str(info["cid"]) for _p, info in store.pin_records()}

    # unpinned complete files: old ones lose their mark; young ones protect their blocks
    young: dict[bytes, list[str]] = {}
    for mtime, cid in _marks(store):
        if cid in pinned_roots:
            continue
        if when - mtime >= grace:
            store.unmark_file(cid)
            report.unmarked.append(cid)
            continue
        for digest in file_digests(store, cid) or {digest_of(cid)}:
            young.setdefault(digest, []).append(cid)

    cache: list[tuple[float, int, bytes, str]] = []
    for digest, mtime, size, path in _blocks(store):
        if digest in live:
            report.pinned_bytes += size
        elif when - mtime >= grace and digest not in young:
            _remove(path, size, report)
        else:
            cache.append((mtime, size, digest, path))

    total = sum(size for _m, size, _d, _p in cache)
    cache.sort()
    for mtime, size, digest, path in cache:
        if total <= max_cache_bytes:
            break
        if when - mtime < min_age:
            continue
        for cid in young.pop(digest, []):
            if cid not in report.unmarked:
                store.unmark_file(cid)
                report.unmarked.append(cid)
        _remove(path, size, report)
        total -= size
    report.cache_bytes = total
    return report


def _remove(path: str, size: int, report: CollectReport) -> None:
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return
    report.removed_blocks += 1
    report.removed_bytes += size

"""The bitswap block store's collector: pinned files stay, the cache is bounded (issue 15 item 5).

Real files on disk; time is passed explicitly (``now=``) and block ages are
set with ``os.utime``, so nothing sleeps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedstore_bitswap.blockstore import BlockStore, digest_of
from fedstore_bitswap.collect import collect, file_digests

from fedstore.ipld.blocks import write_dag_blocks
from fedstore.ipld.cid import DagParams

PARAMS = DagParams(cid_version=1, chunk_size=1024, max_links=4)
KIB = 1024


def fetched(store: BlockStore, data: bytes) -> str:
    """Store *data* as a network fetch does: blocks, then the complete mark, no pin."""
    blocks: list[tuple[bytes, bytes]] = []
    summary = write_dag_blocks(data, PARAMS, lambda c, b: blocks.append((c, b)))
    for cid, block in blocks:
        store.put_block(cid[-32:], block)
    store.mark_file(summary.cid, summary.size, summary.blocks)
    return summary.cid


def age(store: BlockStore, cid: str, seconds: float, now: float) -> None:
    """Make *cid*'s blocks and mark look *seconds* old at time *now*."""
    digests = file_digests(store, cid)
    assert digests is not None
    when = now - seconds
    for d in digests:
        h = d.hex()
        os.utime(store.root / "objects" / h[:2] / h, (when, when))
    mark = store.root / "roots" / digest_of(cid).hex()
    if mark.exists():
        os.utime(mark, (when, when))


def test_pinned_files_stay_old_cache_goes(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks")
    kept = store.put_file(os.urandom(6 * KIB), PARAMS).cid
    store.pin_file(kept)
    old = fetched(store, os.urandom(5 * KIB))
    young = fetched(store, os.urandom(5 * KIB))
    now = 1_000_000.0
    for cid in (kept, old):
        age(store, cid, 3600, now)
    age(store, young, 10, now)

    report = collect(store, grace=600, max_cache_bytes=1 << 30, now=now)
    assert report.unmarked == [old]
    assert store.has_file(kept) and store.is_pinned(kept)
    assert b"".join(store.iter_file(kept))  # every block of the pinned file is there
    assert not store.has_file(old) and file_digests(store, old) is None
    assert store.has_file(young) and file_digests(store, young) is not None
    assert report.removed_blocks > 0 and report.cache_bytes > 0 and report.pinned_bytes > 0
    # the pinned file's digests are cached in its pin mark for the next run
    pin = json.loads((store.root / "pins" / digest_of(kept).hex()).read_text())
    assert len(pin["digests"]) == len(file_digests(store, kept) or ())


def test_the_cache_is_kept_under_its_byte_budget_oldest_first(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks")
    now = 2_000_000.0
    cids = []
    for i in range(10):  # ten 4 KiB payloads, one a minute, all within the TTL
        cid = fetched(store, os.urandom(4 * KIB))
        age(store, cid, 600 - 60 * i, now)
        cids.append(cid)
    newest = fetched(store, os.urandom(4 * KIB))  # still being written: spared
    report = collect(store, grace=3600, max_cache_bytes=12 * KIB, min_age=30, now=now)
    assert report.cache_bytes <= 12 * KIB + 8 * KIB  # the budget, plus the spared young file
    assert store.has_file(newest) and file_digests(store, newest) is not None
    assert not store.has_file(cids[0]) and store.has_file(cids[-1])  # oldest went first
    assert set(report.unmarked) == {c for c in cids if not store.has_file(c)}


def test_partial_fetches_are_collected_and_shared_blocks_stay(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks")
    data = os.urandom(8 * KIB)
    kept = store.put_file(data, PARAMS).cid
    store.pin_file(kept)
    blocks: list[tuple[bytes, bytes]] = []
    write_dag_blocks(data[: 4 * KIB] + os.urandom(KIB), PARAMS, lambda c, b: blocks.append((c, b)))
    for cid, block in blocks[:-1]:  # a fetch that never completed, sharing leaves with `kept`
        store.put_block(cid[-32:], block)
    now = os.path.getmtime(store.root / "pins" / digest_of(kept).hex()) + 7200
    report = collect(store, grace=600, max_cache_bytes=1 << 30, now=now)
    assert report.removed_blocks >= 1
    assert b"".join(store.iter_file(kept)) == data  # shared leaves were live


def test_a_store_from_before_pins_keeps_everything_it_held(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    store = BlockStore(root)
    held = store.put_file(os.urandom(3 * KIB), PARAMS).cid
    for p in (root / "pins").iterdir():
        p.unlink()
    (root / "pins").rmdir()  # as an older fedstore left it
    store = BlockStore(root)
    assert store.is_pinned(held)
    report = collect(store, grace=0.001, max_cache_bytes=0, min_age=0, now=10**10)
    assert store.has_file(held) and report.removed_blocks == 0


def test_unpinning_makes_a_file_collectable(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks")
    cid = store.put_file(os.urandom(3 * KIB), PARAMS).cid
    store.pin_file(cid)
    store.unpin_file(cid)
    assert not store.is_pinned(cid)
    collect(store, grace=1, max_cache_bytes=1 << 30, now=10**10)
    assert not store.has_file(cid) and file_digests(store, cid) is None

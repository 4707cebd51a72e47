"""AsyncCatalog runs DB work in worker threads: the trio loop keeps running meanwhile."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from fedstore.catalog import AsyncCatalog


async def test_loop_keeps_ticking_while_a_db_call_waits_for_a_lock(tmp_path: Path) -> None:
    acat = await AsyncCatalog.open(tmp_path)
    async with acat:
        # Another connection holds the write lock, so the add blocks (busy_timeout) in its thread.
        blocker = sqlite3.connect(acat.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        ticks = 0
        released = trio.Event()
        done = trio.Event()
        done_before_release = False

        async def writer() -> None:
            nonlocal done_before_release
            await acat.add_checkpoint(
                1, "QmA", cid_version=0, codec="c", raw_size=1, stored_size=1, path="p"
            )
            done_before_release = not released.is_set()
            done.set()

        async def ticker() -> None:
            nonlocal ticks
            while ticks < 20:
                await trio.sleep(0.005)
                ticks += 1
            blocker.execute("COMMIT")
            blocker.close()
            released.set()

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                nursery.start_soon(ticker)
                await done.wait()
        assert ticks == 20
        assert not done_before_release, "the write should have waited for the lock"
        assert await acat.list_rounds() == [1]


async def test_async_methods_round_trip(tmp_path: Path) -> None:
    async with await AsyncCatalog.open(tmp_path) as acat:
        await acat.add_checkpoint(
            2, "QmB", cid_version=0, codec="c", raw_size=1, stored_size=1, path="p"
        )
        latest = await acat.latest_checkpoint()
        assert latest is not None and latest.round == 2
        await acat.record_announcement(3, "QmC", "peerA", "model-cids")
        got = await acat.latest_announced()
        assert got is not None and (got.round, got.cid, got.sender_peer) == (3, "QmC", "peerA")
        await acat.upsert_peer("peerA", ["/ip4/127.0.0.1/tcp/1"], "trainer")
        assert [p.role for p in await acat.list_peers()] == ["trainer"]
        await acat.set_pin("QmB", "kubo", "pinned")
        assert [p.state for p in await acat.pins_for("QmB")] == ["pinned"]
        assert await acat.run(lambda c, r: c.get_checkpoint(r) is not None, 2)
        cols, rows = await acat.read_only_query("SELECT COUNT(*) AS n FROM round_history")
        assert cols == ("n",) and rows == [(2,)]


async def test_several_catalogs_open_at_once_in_one_process(tmp_path: Path) -> None:
    """Two nodes in one trio run open (and migrate) their catalogs concurrently."""
    import trio

    from fedstore.catalog import Catalog

    opened: list[object] = []

    async def open_one(i: int) -> None:
        opened.append(await trio.to_thread.run_sync(Catalog.open, tmp_path / f"node{i}"))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(open_one, i)
    assert len(opened) == 4
    for i in range(4):
        assert (tmp_path / f"node{i}" / "catalog.sqlite").exists()


async def test_async_prune_announcements(tmp_path: Path) -> None:
    from fedstore.catalog import AsyncCatalog

    cid = "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
    async with await AsyncCatalog.open(tmp_path) as cat:
        for r in range(4):
            await cat.record_announcement(r, cid, "12D3KooWpeer", "model-cids")
        assert await cat.prune_announcements(1) == 3
        assert [a.round for a in await cat.announcements()] == [3]

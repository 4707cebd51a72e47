"""Sync against peers that claim what they cannot serve (issue 15 items 3 and 6), over loopback.

The attacker is a raw signed gossipsub writer (:mod:`hostile.gossip`): its
announcements are protocol-valid (its own key, the exact ``CID:<round>:<cid>``
grammar, rounds near 10^12) but name CIDs nobody has. The honest peer and the
victim are real nodes on separate data directories and filesystem roots, so
the honest checkpoint reaches the victim only over bitswap.

Before: the three bogus claims were the only candidates any sync tried
(``SYNCED=none``), across restarts and after the attacker left; with
``--auto-sync``, 291 of them cost 206 failed syncs, and the victim's head
requests got it rate-limited by its own bootstrap.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest
from hostile.gossip import GossipWriter
from hostile.nodes import Events, machine, weights

from fedstore.ipld.cid import cid_of_bytes
from fedstore.node.events import HeadReceived, Heard, Synced, SyncFailed
from fedstore.p2p.headproto import HEAD_PROTOCOL
from fedstore.p2p.messages import ANNOUNCE_TOPIC, format_announcement

pytestmark = pytest.mark.slow

TOP = 10**12
BOGUS = [(TOP - i, cid_of_bytes(f"nobody has this {i}".encode())) for i in range(3)]


async def announce_bogus(victim_addr: str, claims: list[tuple[int, str]], ev: Events) -> str:
    """Announce *claims* to the victim from a fresh hostile identity, and stay until the
    victim heard them all; the liar's peer id."""
    async with GossipWriter.start([ANNOUNCE_TOPIC]) as writer:
        target = await writer.connect(victim_addr)
        await writer.send(target, [(ANNOUNCE_TOPIC, format_announcement(r, c)) for r, c in claims])
        for r, c in claims:
            await ev.wait(Heard, lambda e, r=r, c=c: (e.round, e.cid) == (r, c))
        return writer.peer_id


async def test_bogus_claims_near_10_12_do_not_deny_sync_even_across_restarts(
    tmp_path: Path,
) -> None:
    async with machine(tmp_path, "honest") as (honest, _):
        rec5 = await honest.save_checkpoint(5, weights(5))
        async with machine(tmp_path, "victim") as (victim, ev):
            await victim.connect(honest.addrs()[0])
            await ev.wait(HeadReceived, lambda e: e.round == 5)
            liar = await announce_bogus(victim.addrs()[0], BOGUS, ev)
            await victim.recorded()

            start = time.monotonic()
            head = await victim.sync(ask_peers=False)
            took = time.monotonic() - start
            # one of the liar's claims cost an attempt; then the honest round came
            assert head == (5, rec5.cid), ev.of(SyncFailed)
            assert len(ev.of(SyncFailed)) == 0 and ev.of(Synced)[-1] == Synced(5, rec5.cid)
            failed = await victim.catalog.failed_claims()
            assert [(f.round, f.peer) for f in failed] == [(TOP, liar)]
            # the failed claim expired: the liar's announcement of it is gone
            assert not await victim.catalog.announcements(cid=BOGUS[0][1])
            print(f"\nfirst sync with 3 bogus claims at ~10^12: fetched round 5 in {took:.2f} s")
        rec6 = await honest.save_checkpoint(6, weights(6))

    # the attacker has left; both nodes restart (the victim with what it remembered)
    async with (
        machine(tmp_path, "honest") as (honest, _),
        machine(tmp_path, "victim") as (victim, ev),
    ):
        assert len(await victim.catalog.failed_claims()) == 1
        await victim.connect(honest.addrs()[0])
        await ev.wait(HeadReceived, lambda e: e.round == 6)
        await victim.recorded()
        start = time.monotonic()
        head = await victim.sync()
        took = time.monotonic() - start
        assert head == (6, rec6.cid)
        # the liar's two remaining claims rank below the honest peer's: not even tried
        assert ev.of(SyncFailed) == [] and ev.of(Synced)[-1] == Synced(6, rec6.cid)
        assert len(await victim.catalog.failed_claims()) == 1
        print(f"after restarts: fetched round 6 in {took:.2f} s, no bogus claim tried")


async def test_auto_sync_is_debounced_and_never_spends_the_bootstrap_allowance(
    tmp_path: Path,
) -> None:
    """291 bogus announcements at the liar's full allowance, with --auto-sync on."""
    async with machine(tmp_path, "boot", role="bootstrap") as (boot, _):
        rec = await boot.save_checkpoint(3, weights(3))
        async with machine(tmp_path, "victim", auto_sync=True) as (victim, ev):
            await victim.connect(boot.addrs()[0])
            await ev.wait(Synced, lambda e: e.round == 3)  # the honest head, at once
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            start = time.monotonic()
            async with GossipWriter.start([ANNOUNCE_TOPIC]) as writer:
                target = await writer.connect(victim.addrs()[0])

                def bogus(i: int) -> tuple[str, bytes]:
                    cid = cid_of_bytes(f"bogus {i}".encode())
                    return ANNOUNCE_TOPIC, format_announcement(TOP - i, cid)

                await writer.send_at_rate(target, bogus, count=291, rate=19.0)
                await ev.until(lambda: len(ev.of(Heard)) >= 291 + 1, timeout=30)
                # the honest bootstrap saves a new round meanwhile: it must still arrive
                rec4 = await boot.save_checkpoint(4, weights(4))
                await ev.wait(Synced, lambda e: e.round == 4, timeout=90)
            elapsed = time.monotonic() - start
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            failed_syncs = len(ev.of(SyncFailed))
            print(
                f"\n291 bogus announcements in {elapsed:.1f} s: {victim.auto_syncs} auto-syncs, "
                f"{failed_syncs} failed, {len(await victim.catalog.failed_claims())} failed "
                f"claims remembered; test process CPU {cpu:.1f} s (all nodes and the attacker)"
            )
            assert (await victim.head()) == (4, rec4.cid)
            assert rec.cid != rec4.cid
            # debounced: at most one sync per 2 s, doubling after failures
            assert victim.auto_syncs <= elapsed / 2 + 2, victim.auto_syncs
            assert failed_syncs <= 12, failed_syncs
            # auto-sync asked nobody for heads: the bootstrap never rate-limited the victim
            assert boot.counters.count(HEAD_PROTOCOL) == 0, boot.counters.snapshot()

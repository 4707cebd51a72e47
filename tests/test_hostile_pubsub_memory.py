"""A flood of large valid messages does not pin memory (issue 15 item 4).

py-libp2p 0.8.1's gossipsub equivocation check kept every validated message
whole, trimmed only past 1,000 entries: 700 KiB envelopes at 20/s from one
peer, inside its allowance, took a node from 132 to 715 MiB, never released.
fedstore carries a patch (:mod:`fedstore.p2p.pubsub_patches`) that keeps a
digest per message instead.

The victim is a real ``fedstore node`` process joined to ``fed-learn``; the
attacker a raw signed gossipsub writer (:mod:`hostile.gossip`) sending valid
700 KiB inline envelopes at 19/s. The victim's resident memory is read from
``/proc`` before and after, once with the patch switched off
(``FEDSTORE_LIBP2P_PATCHES=0``, py-libp2p as released) and once with it,
side by side in one run; both figures are printed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from hostile.gossip import GossipWriter

from fedstore.node.driver import NodeProcess, python_env
from fedstore.p2p.messages import TRAINING_TOPIC, encode_inline

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

MIB = 1 << 20
SIZE = 700 * 1024
HALF = 100  # envelopes per half of the flood
RATE = 19.0  # within the default allowance (20/s, burst 40): nothing is rate-limited


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def wait_delivered(victim: NodeProcess, count: int) -> int:
    """Wait (bounded) until *count* RECEIVED lines arrived; how many did."""
    return victim.wait_count("RECEIVED", count, timeout=60)


def flood_victim(tmp_path: Path, name: str, patches: str) -> tuple[int, int, int, int]:
    """RSS before, after the first half, after the second half; envelopes delivered."""
    env = python_env(
        {"FEDSTORE_BACKENDS": "filesystem", "FEDSTORE_LIBP2P_PATCHES": patches},
        root=tmp_path / f"{name}-objects",
    )
    args = ["--dir", str(tmp_path / name), "--reannounce", "0"]
    rss: list[int] = []
    with NodeProcess(name, args, env) as victim:
        victim.expect("READY")
        victim.run("join fed-learn")
        addr = victim.expect("LISTENING")
        rss.append(vm_rss(victim.pid))

        async def attack() -> None:
            async with GossipWriter.start([TRAINING_TOPIC]) as writer:
                target = await writer.connect(addr)

                def envelope(i: int) -> tuple[str, bytes]:
                    body = i.to_bytes(8, "big") + os.urandom(8) + bytes(SIZE - 16)
                    return TRAINING_TOPIC, encode_inline(body, limit=786_432)

                for half in (0, 1):
                    await writer.send_at_rate(
                        target, lambda i, h=half: envelope(h * HALF + i), count=HALF, rate=RATE
                    )
                    # delivered means validated, equivocation-checked and cached by libp2p
                    await trio.to_thread.run_sync(wait_delivered, victim, (half + 1) * HALF)
                    rss.append(vm_rss(victim.pid))

        trio.run(attack)
        delivered = wait_delivered(victim, 2 * HALF)
    return rss[0], rss[1], rss[2], delivered


def test_valid_large_envelopes_do_not_pin_memory(tmp_path: Path) -> None:
    half_payload = HALF * SIZE
    r0 = flood_victim(tmp_path, "unpatched", "0")
    r1 = flood_victim(tmp_path, "patched", "1")

    def show(r: tuple[int, int, int, int]) -> str:
        return f"{r[0] / MIB:.0f} -> {r[1] / MIB:.0f} -> {r[2] / MIB:.0f} MiB"

    print(
        f"\nvictim RSS under 2 x {HALF} valid 700 KiB envelopes at {RATE:g}/s "
        f"({2 * half_payload / MIB:.0f} MiB sent): py-libp2p as released {show(r0)}; "
        f"patched {show(r1)}; delivered {r0[3]} / {r1[3]}"
    )
    assert r0[3] == r1[3] == 2 * HALF  # every envelope delivered either way
    # as released, every envelope stays in memory: the second half adds its own size
    assert r0[2] - r0[1] > 0.6 * half_payload, "the flood no longer reproduces the leak"
    # patched, memory is flat once libp2p's message cache window is full
    assert r1[2] - r1[1] < 16 * MIB, f"RSS grew {(r1[2] - r1[1]) / MIB:.0f} MiB in the 2nd half"
    assert r1[2] - r1[0] < 64 * MIB, f"RSS grew {(r1[2] - r1[0]) / MIB:.0f} MiB in all"

"""Three fedstore nodes on separate network hosts (Linux network namespaces), bitswap only.

Each node is its own process inside its own namespace, with its own data
directory and filesystem root; the only backend is ``bitswap``, so every
checkpoint a node gets comes over the (namespaced) network from its peers.

    ns A (10.203.0.1) ──veth──┐
    ns B (10.203.0.2) ──veth──┼── bridge in ns BR
    ns C (10.203.0.3) ──veth──┘

The namespaces, links and addresses are created here with unique names and
removed at the end; nothing outside them is configured or dialled. A's and
B's links are rate-limited (tc tbf) so a transfer lasts long enough to be
interrupted. The story:

1. A saves and announces rounds 1-3; B syncs round 3 from A.
2. C starts late, connects to A and B, learns the head (round 3) from both,
   and syncs it; its blocks come from A *and* B.
3. A saves a larger round 4, B syncs it; C starts syncing round 4 and A is
   killed (SIGKILL) in the middle of the transfer; C completes from B.

Skipped with the reason when not root, or when ``ip netns``, veth, bridges or
``tc`` are unavailable.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from _waiting import wait_until

from fedstore.node.driver import NodeProcess, python_env

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.multiprocess]

TIMEOUT = 60.0
SUBNET = "10.203.0"
PORT = 4001
RATE = "40mbit"  # per serving link: about 5 MB/s
ROUND3_BYTES = 3 * 1024 * 1024
ROUND4_BYTES = 24 * 1024 * 1024


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _skip_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' (iproute2) is not installed"
    probe = f"fsprobe{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"'ip netns add' failed: {getattr(exc, 'stderr', '') or exc}".strip()
    try:
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", probe, "link", "set", "v0", "up")
        subprocess.run(
            ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "v0", "root",
             "tbf", "rate", RATE, "burst", "64kb", "latency", "100ms"],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"veth, bridge or tc tbf unavailable: {getattr(exc, 'stderr', '') or exc}".strip()
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Lan:
    namespaces: dict[str, str]  # host name -> namespace name
    addrs: dict[str, str]  # host name -> IPv4 address


@contextmanager
def namespaced_lan(hosts: list[str], shaped: set[str]) -> Iterator[Lan]:
    """One namespace per host, all bridged in a private namespace; removed on exit."""
    tag = uuid.uuid4().hex[:8]
    bridge_ns = f"fsbr-{tag}"
    namespaces = {h: f"fs{h.lower()}-{tag}" for h in hosts}
    addrs = {h: f"{SUBNET}.{i + 1}" for i, h in enumerate(hosts)}
    created: list[str] = []
    try:
        for ns in (bridge_ns, *namespaces.values()):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        for i, (host, ns) in enumerate(namespaces.items()):
            port = f"p{i}"
            _ip("-n", bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
            _ip("-n", bridge_ns, "link", "set", port, "master", "br0")
            _ip("-n", bridge_ns, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{addrs[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            if host in shaped:
                subprocess.run(
                    ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                     "tbf", "rate", RATE, "burst", "64kb", "latency", "100ms"],
                    check=True, capture_output=True, text=True, timeout=30,
                )  # fmt: skip
        yield Lan(namespaces, addrs)
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


def start_node(stack: ExitStack, lan: Lan, host: str, tmp: Path, args: list[str]) -> NodeProcess:
    data = tmp / host
    env = python_env(
        {
            "FEDSTORE_BACKENDS": "bitswap",
            "FEDSTORE_REANNOUNCE_INTERVAL": "0",
            "FEDSTORE_CONNECT_TIMEOUT": "10",
        },
        root=data / "fsroot",  # its own filesystem root (unused: bitswap only)
    )
    listen = f"/ip4/{lan.addrs[host]}/tcp/{PORT}"
    node = NodeProcess(
        host, ["--dir", str(data), "--listen", listen, "--log-level", "INFO", *args], env
    )
    node.argv = ["ip", "netns", "exec", lan.namespaces[host], *node.argv]
    stack.callback(node.close)
    return node.start()


def weights_file(path: Path, nbytes: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, w=rng.standard_normal(nbytes // 4).astype(np.float32))
    return path


def fetched_from(node: NodeProcess, cid: str) -> dict[str, int]:
    """Per-peer block counts from the node's 'bitswap fetched <cid>' log line."""
    text = node.stderr_tail(100_000)
    lines = [ln for ln in text.splitlines() if f"bitswap fetched {cid}:" in ln]
    assert lines, f"no bitswap fetch of {cid} logged; stderr tail:\n{node.stderr_tail(30)}"
    peers = lines[-1].split("from peers: ", 1)[1].split(";")[0]
    return {p: int(n) for p, n in re.findall(r"(\w+)=(\d+)", peers)}


def block_count(data_dir: Path) -> int:
    objects = data_dir / "blocks" / "objects"
    if not objects.is_dir():
        return 0
    return sum(1 for d in objects.iterdir() for _ in d.iterdir())


def saved_cid(lines: list[object]) -> str:
    values = [ln.value for ln in lines if getattr(ln, "key", "") == "SAVED"]  # type: ignore[attr-defined]
    assert len(values) == 1
    return values[0].split(":", 1)[1]


def test_three_hosts_sync_over_bitswap_and_survive_a_dying_peer(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with namespaced_lan(["A", "B", "C"], shaped={"A", "B"}) as lan, ExitStack() as stack:
        a = start_node(stack, lan, "A", tmp_path, ["--role", "bootstrap"])
        a_addr = a.expect("LISTENING", timeout=TIMEOUT)
        assert a_addr.startswith(f"/ip4/{lan.addrs['A']}/tcp/{PORT}/p2p/")
        a_id = a_addr.rsplit("/", 1)[1]
        b = start_node(stack, lan, "B", tmp_path, ["--role", "trainer", "--bootstrap", a_addr])
        b_addr = b.expect("LISTENING", timeout=TIMEOUT)
        b_id = b_addr.rsplit("/", 1)[1]
        b.expect("CONNECTED", lambda v: v == a_id, timeout=TIMEOUT)

        # 1. A saves and announces rounds 1-3; B gets round 3 from A
        a.run("checkpoint_save 1", timeout=TIMEOUT)
        a.run("checkpoint_save 2", timeout=TIMEOUT)
        round3 = weights_file(tmp_path / "round3.npz", ROUND3_BYTES, seed=3)
        cid3 = saved_cid(a.run(f"checkpoint_save 3 {round3}", timeout=TIMEOUT))
        b.expect("HEARD", lambda v: v.startswith(f"3:{cid3}:"), timeout=TIMEOUT)
        synced = b.run("sync", timeout=TIMEOUT)
        assert [ln.value for ln in synced if ln.key == "SYNCED"] == [f"3:{cid3}"]

        # 2. C starts late, learns the head from A and B, syncs from both
        c = start_node(stack, lan, "C", tmp_path, ["--role", "trainer", "--bootstrap", a_addr])
        c.expect("CONNECTED", lambda v: v == a_id, timeout=TIMEOUT)
        c.run(f"connect {b_addr}", timeout=TIMEOUT)
        for peer in (a_id, b_id):
            c.expect("HEAD", lambda v, p=peer: v == f"3:{cid3}:{p}", since=0, timeout=TIMEOUT)
        synced = c.run("sync", timeout=TIMEOUT)
        assert [ln.value for ln in synced if ln.key == "SYNCED"] == [f"3:{cid3}"]
        sources = fetched_from(c, cid3)
        assert set(sources) == {a_id, b_id}, sources
        assert all(n >= 1 for n in sources.values()), sources

        # 3. a larger round 4: B has it, then A dies while C is fetching it
        round4 = weights_file(tmp_path / "round4.npz", ROUND4_BYTES, seed=4)
        cid4 = saved_cid(a.run(f"checkpoint_save 4 {round4}", timeout=TIMEOUT))
        b.expect("HEARD", lambda v: v.startswith(f"4:{cid4}:"), timeout=TIMEOUT)
        synced = b.run("sync", timeout=2 * TIMEOUT)
        assert [ln.value for ln in synced if ln.key == "SYNCED"] == [f"4:{cid4}"]
        c.expect("HEARD", lambda v: v.startswith(f"4:{cid4}:"), timeout=TIMEOUT)

        (a_file,) = (tmp_path / "A" / "rounds").glob(f"round_000004_{cid4}.*")
        total4 = -(-a_file.stat().st_size // 262144)  # leaf blocks of round 4
        before = block_count(tmp_path / "C")
        pos = c.send("sync")

        def fifth_arrived() -> bool:  # ~20% of round 4's blocks, C still running
            assert c.returncode is None
            return block_count(tmp_path / "C") >= before + total4 // 5

        wait_until(fifth_arrived, "C's transfer of round 4", timeout=TIMEOUT, interval=0.02)
        at_kill = block_count(tmp_path / "C") - before
        a.kill(signal.SIGKILL)
        assert at_kill < total4, "the transfer finished before A was killed"
        c.expect("DISCONNECTED", lambda v: v == a_id, since=pos, timeout=TIMEOUT)
        assert c.expect("SYNCED", since=pos, timeout=2 * TIMEOUT) == f"4:{cid4}"
        sources = fetched_from(c, cid4)
        assert sources.get(a_id, 0) >= 1 and sources.get(b_id, 0) >= 1, sources
        print(f"round 4: {at_kill}/{total4} blocks at C when A was killed; by peer {sources}")

        # C's copy is A's file, byte for byte, in C's own data directory
        mine = list((tmp_path / "C" / "rounds").glob(f"round_000004_{cid4}.*"))
        assert len(mine) == 1 and mine[0].read_bytes() == a_file.read_bytes()

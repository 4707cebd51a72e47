"""Separate ``fedstore node`` processes on loopback, driven by their status lines.

A bootstrap and two trainers share one filesystem-backend root (the embedded
default). Every wait is for a status line with a deadline; no fixed sleeps.
The tests share one network (module fixture) and use distinct round numbers.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedstore.node.driver import NodeProcess, python_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TIMEOUT = 40.0


@dataclass
class Net:
    tmp: Path
    env: dict[str, str]
    boot: NodeProcess
    t1: NodeProcess
    t2: NodeProcess
    boot_addr: str

    def trainer(self, name: str) -> NodeProcess:
        return NodeProcess(
            name,
            ["--role", "trainer", "--dir", str(self.tmp / name), "--bootstrap", self.boot_addr],
            self.env,
        )


def peer_id(node: NodeProcess) -> str:
    return node.expect("PEER_ID", timeout=TIMEOUT)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("net")
    env = python_env(
        {
            "FEDSTORE_BACKENDS": "filesystem",
            "FEDSTORE_REANNOUNCE_INTERVAL": "0",
            "FEDSTORE_INLINE_LIMIT": "64",
        },
        root=tmp / "fsroot",
    )
    boot = NodeProcess("boot", ["--role", "bootstrap", "--dir", str(tmp / "boot")], env).start()
    nodes = [boot]
    try:
        addr = boot.expect("LISTENING", timeout=TIMEOUT)
        n = Net(tmp, env, boot, boot, boot, addr)
        n.t1 = n.trainer("t1").start()
        nodes.append(n.t1)
        n.t2 = n.trainer("t2").start()
        nodes.append(n.t2)
        for t in (n.t1, n.t2):
            t.expect("CONNECTED", lambda v: addr.endswith(v), timeout=TIMEOUT)
        boot.run("wait_peers 2 model-cids 30", timeout=TIMEOUT)
        n.t1.run("wait_peers 1 model-cids 30", timeout=TIMEOUT)
        n.t2.run("wait_peers 1 model-cids 30", timeout=TIMEOUT)
        yield n
        nodes.extend([n.t1, n.t2])  # tests may have replaced a trainer
    finally:
        for node in nodes:
            node.close()


def test_checkpoint_saved_by_one_is_announced_and_synced_by_another(net: Net) -> None:
    t1_id = peer_id(net.t1)
    mark2, markb = net.t2.mark(), net.boot.mark()
    out = net.t1.run("checkpoint_save 1", timeout=TIMEOUT)
    saved = [ln.value for ln in out if ln.key == "SAVED"]
    assert len(saved) == 1 and saved[0].startswith("1:")
    cid = saved[0].split(":")[1]
    assert f"1:{cid}" in [ln.value for ln in out if ln.key == "ANNOUNCED"]
    # heard through the bootstrap, with the verified signer as sender
    assert net.t2.expect("HEARD", since=mark2, timeout=TIMEOUT) == f"1:{cid}:{t1_id}"
    assert net.boot.expect("HEARD", since=markb, timeout=TIMEOUT) == f"1:{cid}:{t1_id}"
    synced = net.t2.run("sync", timeout=TIMEOUT)
    assert [ln.value for ln in synced if ln.key == "SYNCED"] == [f"1:{cid}"]
    loaded = net.t2.run("checkpoint_load 1", timeout=TIMEOUT)
    assert [ln.value for ln in loaded if ln.key == "LOADED"][0].startswith(f"1:{cid}:")
    # the file in t2's data directory is byte-identical to t1's
    f1 = list((net.tmp / "t1" / "rounds").glob(f"round_000001_{cid}.*"))
    f2 = list((net.tmp / "t2" / "rounds").glob(f"round_000001_{cid}.*"))
    assert len(f1) == len(f2) == 1 and f1[0].read_bytes() == f2[0].read_bytes()


def test_training_topic_inline_and_large_payload_by_cid(net: Net) -> None:
    for node in (net.t1, net.t2, net.boot):
        node.run("join fed-learn", timeout=TIMEOUT)
    net.t1.run("wait_peers 1 fed-learn 30", timeout=TIMEOUT)
    net.boot.run("wait_peers 2 fed-learn 30", timeout=TIMEOUT)
    t1_id = peer_id(net.t1)
    small, large = "hello federation", "x" * 200  # inline limit is 64 bytes
    mark = net.t2.mark()
    net.t1.run(f"publish fed-learn {small}", timeout=TIMEOUT)
    out = net.t1.run(f"publish fed-learn {large}", timeout=TIMEOUT)
    published = [ln.value for ln in out if ln.key == "PUBLISHED"][0]
    assert published.count(":") == 3  # topic:size:digest:cid -> went by CID
    for text in (small, large):
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        expected = f"fed-learn:{t1_id}:{len(text)}:{digest}"
        assert net.t2.expect("RECEIVED", lambda v, e=expected: v == e, since=mark, timeout=TIMEOUT)


def test_bad_announcement_changes_nothing(net: Net) -> None:
    t1_id = peer_id(net.t1)
    before = net.boot.run("cids", timeout=TIMEOUT)
    markb, mark2 = net.boot.mark(), net.t2.mark()
    net.t1.run("publish model-cids CID:abc:QmNotACid", timeout=TIMEOUT)
    net.t1.run("publish model-cids garbage", timeout=TIMEOUT)
    assert (
        net.boot.expect("DROPPED", since=markb, timeout=TIMEOUT) == f"model-cids:bad_round:{t1_id}"
    )
    assert net.boot.expect(
        "DROPPED", lambda v: v.startswith("model-cids:malformed"), since=markb, timeout=TIMEOUT
    )
    # a valid announcement sent after the bad ones arrives; the bad ones left no trace
    out = net.t1.run("checkpoint_save 2", timeout=TIMEOUT)
    cid2 = [ln.value for ln in out if ln.key == "SAVED"][0].split(":")[1]
    assert net.t2.expect("HEARD", since=mark2, timeout=TIMEOUT) == f"2:{cid2}:{t1_id}"
    net.boot.expect("HEARD", lambda v: v.startswith("2:"), since=markb, timeout=TIMEOUT)
    after = net.boot.run("cids", timeout=TIMEOUT)
    new = {ln.value for ln in after if ln.key == "CID"} - {
        ln.value for ln in before if ln.key == "CID"
    }
    assert new == {f"2:{cid2}:{t1_id}"}
    # the bootstrap dropped them, so they never reached t2 at all
    assert net.t2.values("DROPPED", since=mark2) == []
    assert net.boot.returncode is None and net.t1.returncode is None


def test_late_joiner_learns_head_and_syncs(net: Net) -> None:
    net.t1.run("checkpoint_save 3", timeout=TIMEOUT)
    cid3 = net.t1.values("SAVED")[-1].split(":")[1]
    net.boot.expect("HEARD", lambda v: v.startswith("3:"), timeout=TIMEOUT)
    boot_sync = net.boot.run("sync", timeout=TIMEOUT)
    assert [ln.value for ln in boot_sync if ln.key == "SYNCED"] == [f"3:{cid3}"]
    boot_id = peer_id(net.boot)
    with net.trainer("late") as late:
        # started after every announcement: the head protocol tells it on connect
        assert late.expect("HEAD", lambda v: v.endswith(boot_id), timeout=TIMEOUT) == (
            f"3:{cid3}:{boot_id}"
        )
        out = late.run("sync", timeout=TIMEOUT)
        assert [ln.value for ln in out if ln.key == "SYNCED"] == [f"3:{cid3}"]
        rounds = late.run("rounds", timeout=TIMEOUT)
        assert [ln.value for ln in rounds if ln.key == "ROUNDS"] == ["3"]


def test_sigkill_restart_keeps_peer_id_and_resumes(net: Net) -> None:
    old_id = peer_id(net.t2)
    net.t2.run("sync", timeout=TIMEOUT)  # now at round 3 (or later)
    head_before = net.t2.run("local", timeout=TIMEOUT)
    before = [ln.value for ln in head_before if ln.key == "LOCAL_HEAD"][0]
    before_round = int(before.split(":")[0])
    # killed in the middle of its work: a save it was just asked to do
    net.t2.send("checkpoint_save 9")
    assert net.t2.kill(signal.SIGKILL) == -signal.SIGKILL
    net.t2 = net.trainer("t2").start()
    assert peer_id(net.t2) == old_id
    resumed = int(net.t2.expect("RESUMED", timeout=TIMEOUT))
    assert resumed in (before_round, 9)  # the save either completed or left no trace
    loaded = net.t2.run("checkpoint_load", timeout=TIMEOUT)
    assert [ln.value for ln in loaded if ln.key == "LOADED"][0].startswith(f"{resumed}:")
    net.t2.expect("CONNECTED", lambda v: net.boot_addr.endswith(v), timeout=TIMEOUT)

"""Addresses across hosts: Linux network namespaces on one bridge stand in for machines.

* A node listening on ``0.0.0.0`` prints its LAN address (not 0.0.0.0, not
  127.0.0.1) and a node on another host dials exactly that printed address.
* A peer that cannot reach its bootstrap says so in one line naming the
  address it tried and what to check: a port nobody listens on, a node that
  listens on 127.0.0.1 only, a host that does not answer.

Skipped with the reason when namespaces cannot be built (not root, no ``ip``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from fedstore.cli.control import Reply, call
from fedstore.netns import Lan, bridged_hosts, ns_argv, unavailable_reason
from fedstore.node.driver import NodeProcess, python_env


def ctl(node: NodeProcess, *words: str) -> Reply:
    """What ``fedstore ctl`` does: one command through the node's control socket."""
    return call(node.data_dir(), list(words), timeout=60)


pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.multiprocess]

TIMEOUT = 60.0
PORT = 4001
SUBNET = "10.207.0"


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with bridged_hosts(["agg", "trainer"], rate=None, subnet=SUBNET) as lan:
        yield lan


def _node(
    stack: ExitStack, lan: Lan, host: str, tmp: Path, args: list[str], name: str | None = None
) -> NodeProcess:
    env = python_env({"FEDSTORE_BACKENDS": "bitswap"}, root=tmp / host / "fsroot")
    node = NodeProcess(name or host, ["--dir", str(tmp / host / "data"), *args], env,
                       command="daemon")  # fmt: skip
    node.argv = [*ns_argv(lan.namespaces[host]), *node.argv]
    stack.callback(node.close)
    return node.start()


def test_the_printed_bootstrap_address_is_dialable_from_another_host(
    lan: Lan, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        agg = _node(stack, lan, "agg", tmp_path,
                    ["--role", "bootstrap", "--listen", f"/ip4/0.0.0.0/tcp/{PORT}"])  # fmt: skip
        agg.expect("READY", timeout=TIMEOUT)
        printed = agg.values("LISTENING")
        assert printed == [f"/ip4/{lan.addrs['agg']}/tcp/{PORT}/p2p/{agg.values('PEER_ID')[0]}"]
        status = ctl(agg, "status").result  # ctl reaches the daemon in its namespace
        assert status["bound"] == [f"/ip4/0.0.0.0/tcp/{PORT}"]
        trainer = _node(stack, lan, "trainer", tmp_path, ["--bootstrap", printed[0]])
        agg_id = agg.values("PEER_ID")[0]
        trainer.expect("CONNECTED", lambda v: v == agg_id, timeout=TIMEOUT)
        peers = ctl(trainer, "peers").result["peers"]
        assert [p["peer_id"] for p in peers] == [agg_id]


def _trainer_error(lan: Lan, tmp: Path, bootstrap: str) -> list[str]:
    """What ``api.run_trainer`` prints on the trainer host when *bootstrap* cannot be reached."""
    script = (
        "from fedstore.federation import api\n"
        f"api.run_trainer(lambda a, r, c: (a, 1, {{}}), bootstrap=[{bootstrap!r}], "
        f"data_dir={str(tmp / 'trainer-api')!r}, backends=['filesystem'], connect_timeout=4)\n"
    )
    proc = subprocess.run(
        [*ns_argv(lan.namespaces["trainer"]), sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=python_env(root=tmp / "api-fs"),
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    return proc.stderr.strip().splitlines()


def test_unreachable_bootstrap_says_what_to_check(lan: Lan, tmp_path: Path) -> None:
    peer = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
    agg_ip = lan.addrs["agg"]
    with ExitStack() as stack:
        # the aggregator listens on loopback only, as the Python API used to by default
        agg = _node(stack, lan, "agg", tmp_path,
                    ["--role", "bootstrap", "--listen", f"/ip4/127.0.0.1/tcp/{PORT}"],
                    name="agg-loopback")  # fmt: skip
        agg.expect("READY", timeout=TIMEOUT)
        agg_id = agg.values("PEER_ID")[0]
        last = _trainer_error(lan, tmp_path, f"/ip4/{agg_ip}/tcp/{PORT}/p2p/{agg_id}")[-1]
    assert last.startswith(f"fedstore.errors.NetworkError: cannot reach bootstrap /ip4/{agg_ip}/")
    assert "connection refused" in last
    assert "A node listening on 127.0.0.1 cannot be reached from other hosts" in last
    assert f"--listen /ip4/0.0.0.0/tcp/{PORT}" in last

    # a host on the LAN that does not exist: no answer at all
    ghost = f"{SUBNET}.99"
    last = _trainer_error(lan, tmp_path, f"/ip4/{ghost}/tcp/{PORT}/p2p/{peer}")[-1]
    assert f"cannot reach bootstrap /ip4/{ghost}/tcp/{PORT}/p2p/{peer} after 4 s" in last
    assert f"check that {ghost} is the address the bootstrap node printed" in last
    assert f"no firewall blocks TCP port {PORT}" in last

"""What a node advertises, and what a peer says when it cannot reach its bootstrap.

Unit tests of :mod:`fedstore.p2p.addresses` and :mod:`fedstore.node.bootstrap`,
and real nodes on loopback: a node listening on 0.0.0.0 advertises this
host's interface addresses, a trainer started before its bootstrap connects
as soon as the bootstrap is up (py-libp2p's 60 s negative dial cache does not
hold it back), a trainer whose bootstrap restarts reconnects by itself, and
an unreachable bootstrap is one line naming the address and what to check.
The same across network namespaces: tests/test_netns_addresses.py.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from pathlib import Path

import multiaddr
import pytest
import trio

from fedstore.config import load_node_config
from fedstore.errors import ConfigError, NetworkError
from fedstore.node import open_node
from fedstore.node.bootstrap import dial_reason, explain
from fedstore.node.driver import NodeProcess, python_env
from fedstore.p2p.addresses import (
    AddressPlan,
    InterfaceAddress,
    interface_addresses,
    is_wildcard,
    parse_announce,
)

M = multiaddr.Multiaddr
TIMEOUT = 40.0
PEER = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


def _ifaces() -> list[InterfaceAddress]:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    return [
        InterfaceAddress("lo", "127.0.0.1", v4, up=True, loopback=True),
        InterfaceAddress("eth0", "10.1.2.3", v4, up=True, loopback=False),
        InterfaceAddress("eth0", "169.254.9.9", v4, up=True, loopback=False),  # link-local
        InterfaceAddress("eth1", "192.168.5.6", v4, up=False, loopback=False),  # down
        InterfaceAddress("wg0", "100.64.0.7", v4, up=True, loopback=False),
        InterfaceAddress("lo", "::1", v6, up=True, loopback=True),
        InterfaceAddress("eth0", "fe80::1", v6, up=True, loopback=False),
        InterfaceAddress("eth0", "2001:db8::5", v6, up=True, loopback=False),
    ]


def test_wildcard_listen_advertises_dialable_interface_addresses() -> None:
    plan = AddressPlan(interfaces=_ifaces)
    got = plan([M("/ip4/0.0.0.0/tcp/4001"), M("/ip6/::/tcp/4002")])
    assert [str(a) for a in got] == [
        "/ip4/10.1.2.3/tcp/4001",
        "/ip4/100.64.0.7/tcp/4001",
        "/ip6/2001:db8::5/tcp/4002",
    ]


def test_specific_listen_addresses_are_advertised_as_bound() -> None:
    plan = AddressPlan(interfaces=_ifaces)
    assert [str(a) for a in plan([M("/ip4/127.0.0.1/tcp/5")])] == ["/ip4/127.0.0.1/tcp/5"]


def test_no_dialable_address_falls_back_to_loopback_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    only_lo = [InterfaceAddress("lo", "127.0.0.1", socket.AF_INET, up=True, loopback=True)]
    plan = AddressPlan(interfaces=lambda: only_lo)
    for _ in range(3):
        assert [str(a) for a in plan([M("/ip4/0.0.0.0/tcp/7")])] == ["/ip4/127.0.0.1/tcp/7"]
    warnings = [r for r in caplog.records if "no IPv4 address other hosts can dial" in r.message]
    assert len(warnings) == 1 and "--announce" in warnings[0].message


def test_announce_addresses_replace_everything_and_take_the_bound_port() -> None:
    plan = AddressPlan(parse_announce(["/ip4/203.0.113.7", "/dns4/agg.example/tcp/443"]))
    got = plan([M("/ip4/0.0.0.0/tcp/4001")])
    assert [str(a) for a in got] == ["/ip4/203.0.113.7/tcp/4001", "/dns4/agg.example/tcp/443"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not a multiaddr", "not a multiaddr"),
        ("/tcp/4001", "must start with"),
        (f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}", "leave /p2p out"),
        ("/ip4/1.2.3.4/tcp/0", "port 0"),
        ("/ip4/0.0.0.0/tcp/4001", "wildcard"),
        ("/ip4/1.2.3.4/udp/5/quic-v1", "expected /<host protocol>"),
    ],
)
def test_bad_announce_addresses_are_one_line_errors(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_announce([text])


def test_is_wildcard() -> None:
    assert is_wildcard(M("/ip4/0.0.0.0/tcp/1")) and is_wildcard(M("/ip6/::/tcp/1"))
    assert not is_wildcard(M("/ip4/127.0.0.1/tcp/1"))


def test_this_hosts_interfaces_include_the_loopback() -> None:
    found = interface_addresses()
    assert any(a.address == "127.0.0.1" and a.loopback and not a.dialable for a in found)


def test_announce_setting_and_is_cloud(tmp_path: Path) -> None:
    cfg = load_node_config(
        {"FEDSTORE_ANNOUNCE": "/ip4/203.0.113.7/tcp/4001, /dns4/x.example"},
        environ={},
        cwd=tmp_path,
    )
    assert cfg.announce == ("/ip4/203.0.113.7/tcp/4001", "/dns4/x.example")
    with pytest.raises(ConfigError, match="set one"):
        load_node_config(
            {
                "FEDSTORE_ANNOUNCE": "/ip4/1.2.3.4",
                "FEDSTORE_IS_CLOUD": "true",
                "FEDSTORE_IP": "1.2.3.4",
            },
            environ={},
            cwd=tmp_path,
        )
    with pytest.raises(ConfigError, match="wildcard"):
        load_node_config({"FEDSTORE_ANNOUNCE": "/ip4/0.0.0.0"}, environ={}, cwd=tmp_path)


def test_dial_failures_are_named_and_explained() -> None:
    refused = NetworkError("cannot connect")
    refused.__cause__ = OSError(errno.ECONNREFUSED, "Connection refused")
    assert dial_reason(refused) == "connection refused"
    assert dial_reason(trio.TooSlowError()) == "timed out"
    addr = f"/ip4/10.0.0.5/tcp/4001/p2p/{PEER}"
    text = explain(addr, "connection refused")
    assert "10.0.0.5 port 4001" in text and "--listen /ip4/0.0.0.0/tcp/4001" in text
    text = explain(addr, "timed out")
    assert "firewall" in text and "TCP port 4001" in text
    assert "loopback address" in explain(f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", "timed out")


async def test_a_node_listening_on_all_interfaces_advertises_dialable_addresses(
    tmp_path: Path,
) -> None:
    dialable = [a.address for a in interface_addresses() if a.dialable and a.family == 2]
    cfg = load_node_config(
        {
            "FEDSTORE_DIR": str(tmp_path / "n"),
            "FEDSTORE_BACKENDS": "filesystem",
            "FEDSTORE_FS_ROOT": str(tmp_path / "fs"),
            "FEDSTORE_LISTEN": "/ip4/0.0.0.0/tcp/0",
        },
        environ={},
    )
    async with open_node(cfg) as node:
        addrs = node.addrs()
        bound = node.host.transport_addrs()
    assert bound and all(a.startswith("/ip4/0.0.0.0/tcp/") for a in bound)
    assert not any("/0.0.0.0/" in a for a in addrs)
    hosts = [a.split("/")[2] for a in addrs]
    assert hosts == (dialable or ["127.0.0.1"])
    assert all(a.endswith(f"/p2p/{addrs[0].rsplit('/', 1)[1]}") for a in addrs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_trainer_started_before_its_bootstrap_connects_when_it_comes_up(tmp_path: Path) -> None:
    """Was: py-libp2p's negative cache refused every redial for 60 s after the first failure."""
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fs")
    port = _free_port()
    with NodeProcess("boot0", ["--dir", str(tmp_path / "b"), "--role", "bootstrap"], env) as b:
        boot_id = b.expect("PEER_ID", timeout=TIMEOUT)  # learn its id, then stop it
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{boot_id}"
    trainer_argv = ["--dir", str(tmp_path / "t"), "--bootstrap", addr, "--log-level", "INFO"]
    with NodeProcess("t", trainer_argv, env) as t:
        t.expect("READY", timeout=TIMEOUT)
        t.wait_stderr("not reachable yet", count=3, timeout=TIMEOUT)  # a few dials failed
        listen = f"/ip4/127.0.0.1/tcp/{port}"
        with NodeProcess("boot", ["--dir", str(tmp_path / "b"), "--listen", listen], env) as b:
            b.expect("READY", timeout=TIMEOUT)
            started = time.monotonic()
            t.expect("CONNECTED", lambda v: v == boot_id, timeout=TIMEOUT)
            waited = time.monotonic() - started
            assert waited < 15, f"reconnected only after {waited:.1f} s"
            # the bootstrap restarts (same identity, same port): the trainer dials again
            mark = t.mark()
            b.kill()
            t.expect("DISCONNECTED", lambda v: v == boot_id, since=mark, timeout=TIMEOUT)
        with NodeProcess("boot2", ["--dir", str(tmp_path / "b"), "--listen", listen], env) as b2:
            b2.expect("READY", timeout=TIMEOUT)
            t.expect("CONNECTED", lambda v: v == boot_id, since=mark, timeout=TIMEOUT)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_unreachable_bootstrap_is_one_line_from_the_python_api(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    script = (
        "from fedstore.federation import api\n"
        "api.run_trainer(lambda a, r, c: (a, 1, {}), "
        f"bootstrap=['/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}'], data_dir={str(tmp_path / 't')!r}, "
        "backends=['filesystem'], connect_timeout=2)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=python_env(root=tmp_path / "fs"),
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"fedstore.errors.NetworkError: cannot reach bootstrap /ip4/127.0.0.1/tcp/{port}/p2p/"
    )
    assert "after 2 s: connection refused: nothing accepts connections on 127.0.0.1" in last
    assert "ExceptionGroup" not in proc.stderr  # the error itself, not the nurseries around it
    assert len(proc.stderr.splitlines()) < 40, proc.stderr

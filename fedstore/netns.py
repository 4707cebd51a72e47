"""Hosts on a private bridged LAN: one Linux network namespace per host, links capped with tc.

::

    ns <tag>-h0 (10.204.0.1) --veth-- p0 -+
    ns <tag>-h1 (10.204.0.2) --veth-- p1 -+-- br0 in ns <tag>-br
    ...                                   |

Each host's link is capped in both directions with the ``tbf`` qdisc: on
``eth0`` inside the host's namespace (its upload) and on its bridge port
(``pN``, its download). Nothing outside the namespaces is configured or
dialled. Names carry the creating process id (``fsb<pid>x<n>``), so
:func:`bridged_hosts` also removes namespaces left behind by a run of this
code that was killed before it could clean up.

Needs root, ``ip`` and ``tc`` (iproute2), veth, bridges and tbf;
:func:`unavailable_reason` says which is missing.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Lan", "bridged_hosts", "ns_argv", "tx_bytes", "unavailable_reason"]

PREFIX = "fsb"
_counter = itertools.count()
_NAME = re.compile(rf"^{PREFIX}(\d+)x\d+-")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


def _tbf(ns: str, dev: str, rate: str) -> None:
    _run(
        "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
        "tbf", "rate", rate, "burst", "64kb", "latency", "100ms",
    )  # fmt: skip


def unavailable_reason(rate: str = "25mbit") -> str | None:
    """Why namespaced hosts cannot be built here (None when they can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}x{next(_counter)}-probe"
    try:
        _run("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"'ip netns add' failed: {getattr(exc, 'stderr', '') or exc}".strip()
    try:
        _run("ip", "-n", probe, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _run("ip", "-n", probe, "link", "set", "v0", "up")
        _tbf(probe, "v0", rate)
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = (getattr(exc, "stderr", "") or str(exc)).strip()
        return f"veth, bridge or tc tbf unavailable: {detail}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Lan:
    """The namespaces and addresses of one bridged LAN, by host name."""

    namespaces: dict[str, str]
    addrs: dict[str, str]
    rate: str


def ns_argv(ns: str) -> list[str]:
    """Prefix that runs a command inside namespace *ns*."""
    return ["ip", "netns", "exec", ns]


def tx_bytes(ns: str, dev: str = "eth0") -> int:
    """Bytes sent so far by *dev* in namespace *ns* (every protocol, headers included)."""
    out = _run(*ns_argv(ns), "cat", f"/sys/class/net/{dev}/statistics/tx_bytes")
    return int(out.stdout.strip())


def _remove_stale() -> None:
    """Delete namespaces of this module whose creating process is gone."""
    try:
        listing = _run("ip", "netns", "list", check=False).stdout
    except OSError:
        return
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _run("ip", "netns", "del", name, check=False)
        except PermissionError:  # alive, someone else's
            continue


@contextmanager
def bridged_hosts(
    hosts: Sequence[str], *, rate: str | None = "25mbit", subnet: str = "10.204.0"
) -> Iterator[Lan]:
    """Namespaces for *hosts* on one bridge, each link capped at *rate* both ways.

    *rate* None leaves the links unshaped. Everything is removed on exit,
    whatever happened inside.
    """
    if len(hosts) > 250:
        raise ValueError("at most 250 hosts on one /24")
    _remove_stale()
    tag = f"{PREFIX}{os.getpid()}x{next(_counter)}"
    bridge = f"{tag}-br"
    namespaces = {h: f"{tag}-h{i}" for i, h in enumerate(hosts)}
    addrs = {h: f"{subnet}.{i + 1}" for i, h in enumerate(hosts)}
    created: list[str] = []
    try:
        for ns in (bridge, *namespaces.values()):
            _run("ip", "netns", "add", ns)
            created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", bridge, "link", "set", "br0", "up")
        for i, (host, ns) in enumerate(namespaces.items()):
            port = f"p{i}"
            _run("ip", "-n", bridge, "link", "add", port, "type", "veth", "peer", "name",
                 "eth0", "netns", ns)  # fmt: skip
            _run("ip", "-n", bridge, "link", "set", port, "master", "br0")
            _run("ip", "-n", bridge, "link", "set", port, "up")
            _run("ip", "-n", ns, "addr", "add", f"{addrs[host]}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            if rate:
                _tbf(ns, "eth0", rate)  # upload
                _tbf(bridge, port, rate)  # download
        yield Lan(namespaces, addrs, rate or "unshaped")
    finally:
        for ns in reversed(created):
            _run("ip", "netns", "del", ns, check=False)

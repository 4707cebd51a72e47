"""Which addresses a node advertises: the ones another host can dial.

A node binds its ``listen`` multiaddrs and tells peers (Identify, the
``LISTENING=`` lines, the bootstrap address it prints) what to dial. Three
rules, first match wins:

1. **Announce addresses** (``--announce``, ``FEDSTORE_ANNOUNCE``, the
   ``announce=`` argument of the Python API; the original design's
   ``FEDSTORE_IS_CLOUD`` + ``FEDSTORE_IP`` means ``/ip4/<IP>``): exactly
   these are advertised. One without a TCP port gets the bound port, so
   ``/ip4/203.0.113.7`` with ``--listen /ip4/0.0.0.0/tcp/4001`` advertises
   ``/ip4/203.0.113.7/tcp/4001``. ``/dns4/<name>/tcp/<port>`` works too.
2. **Wildcard listen** (``/ip4/0.0.0.0/...`` or ``/ip6/::/...``): the host's
   interface addresses replace the wildcard: every address of an interface
   that is up and is not the loopback, link-local addresses left out
   (:func:`interface_addresses`, read with ``getifaddrs(3)`` through ctypes:
   no dependency, no subprocess). A host with none advertises the loopback
   address and says once that other hosts cannot dial it.
3. Otherwise the bound addresses are advertised as they are.

``/p2p/<peer id>`` is appended by py-libp2p; an announce address must not
carry one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import multiaddr

from fedstore.errors import ConfigError

__all__ = [
    "AddressPlan",
    "InterfaceAddress",
    "interface_addresses",
    "is_wildcard",
    "parse_announce",
]

log = logging.getLogger(__name__)

#: Host protocols an announce address may start with.
_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
#: Interface addresses are read again at most this often (seconds).
_INTERFACE_TTL = 10.0
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    """One address of one network interface."""

    interface: str
    address: str
    family: int  # socket.AF_INET or socket.AF_INET6
    up: bool
    loopback: bool

    @property
    def dialable(self) -> bool:
        """Up, not the loopback, not link-local, not unspecified or multicast."""
        ip = ipaddress.ip_address(self.address)
        return (
            self.up
            and not self.loopback
            and not ip.is_loopback
            and not ip.is_link_local
            and not ip.is_unspecified
            and not ip.is_multicast
        )


class _Sockaddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_ubyte * 14)]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_Ifaddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_Sockaddr)),
    ("ifa_netmask", ctypes.POINTER(_Sockaddr)),
    ("ifa_ifu", ctypes.POINTER(_Sockaddr)),
    ("ifa_data", ctypes.c_void_p),
]


def _family(sa: _Sockaddr) -> int:
    if sys.platform.startswith(("darwin", "freebsd", "openbsd", "netbsd")):
        return int(sa.sa_family >> 8 if sys.byteorder == "little" else sa.sa_family & 0xFF)
    return int(sa.sa_family)


def _address(sa_ptr: ctypes._Pointer[_Sockaddr], family: int) -> str | None:
    raw = ctypes.string_at(ctypes.addressof(sa_ptr.contents), 28)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


def interface_addresses() -> list[InterfaceAddress]:
    """Every IPv4/IPv6 address of every interface, in the kernel's order.

    Empty (with a debug line) where ``getifaddrs`` is not available.
    """
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        getifaddrs = libc.getifaddrs
        freeifaddrs = libc.freeifaddrs
    except (OSError, AttributeError, TypeError) as exc:
        log.debug("getifaddrs unavailable: %s", exc)
        return []
    head = ctypes.POINTER(_Ifaddrs)()
    if getifaddrs(ctypes.byref(head)) != 0:
        log.debug("getifaddrs failed: errno %d", ctypes.get_errno())
        return []
    found: list[InterfaceAddress] = []
    try:
        node = head
        while node:
            entry = node.contents
            if entry.ifa_addr:
                family = _family(entry.ifa_addr.contents)
                addr = _address(entry.ifa_addr, family)
                if addr is not None:
                    flags = int(entry.ifa_flags)
                    found.append(
                        InterfaceAddress(
                            interface=(entry.ifa_name or b"?").decode("utf-8", "replace"),
                            address=addr.split("%", 1)[0],
                            family=family,
                            up=bool(flags & _IFF_UP),
                            loopback=bool(flags & _IFF_LOOPBACK),
                        )
                    )
            node = entry.ifa_next
    finally:
        freeifaddrs(head)
    return found


def is_wildcard(addr: multiaddr.Multiaddr) -> bool:
    """Whether *addr* binds every interface (``/ip4/0.0.0.0`` or ``/ip6/::``)."""
    names = [p.name for p in addr.protocols()]
    for proto in ("ip4", "ip6"):
        if proto in names and ipaddress.ip_address(addr.value_for_protocol(proto)).is_unspecified:
            return True
    return False


def parse_announce(texts: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """Announce addresses from text; ConfigError naming the bad one.

    Each is ``/ip4|ip6|dns|dns4|dns6/<host>`` optionally followed by
    ``/tcp/<port>`` (a port above 0); no ``/p2p`` part.
    """
    out: list[multiaddr.Multiaddr] = []
    for text in texts:
        try:
            addr = multiaddr.Multiaddr(text.strip())
        except Exception as exc:
            raise ConfigError(f"announce address {text!r} is not a multiaddr: {exc}") from exc
        names = [p.name for p in addr.protocols()]
        if not names or names[0] not in _HOST_PROTOCOLS:
            raise ConfigError(
                f"announce address {text!r} must start with /ip4, /ip6, /dns, /dns4 or /dns6"
            )
        if "p2p" in names:
            raise ConfigError(
                f"announce address {text!r} names a peer id: leave /p2p out, "
                "fedstore appends this node's"
            )
        if names[1:] not in ([], ["tcp"]):
            raise ConfigError(
                f"announce address {text!r}: expected /<host protocol>/<host>[/tcp/<port>]"
            )
        if names[1:] == ["tcp"] and int(addr.value_for_protocol("tcp")) == 0:
            raise ConfigError(
                f"announce address {text!r} has port 0: give the port peers dial, or leave "
                "/tcp out to announce the bound port"
            )
        if names[0] in ("ip4", "ip6"):
            ip = ipaddress.ip_address(addr.value_for_protocol(names[0]))
            if ip.is_unspecified:
                raise ConfigError(
                    f"announce address {text!r} is the wildcard address, which no peer can "
                    "dial: announce this host's address"
                )
        out.append(addr)
    return out


def _tcp_port(addr: multiaddr.Multiaddr) -> str | None:
    try:
        return str(addr.value_for_protocol("tcp"))
    except Exception:  # not a TCP address
        return None


class AddressPlan:
    """Turns the bound addresses into the advertised ones (see the module docstring).

    Call it with py-libp2p's candidate list (its ``addrs_factory``).
    *interfaces* reads the host's interface addresses (injectable for tests);
    it is read again at most every 10 seconds.
    """

    def __init__(
        self,
        announce: Sequence[multiaddr.Multiaddr] = (),
        *,
        interfaces: Callable[[], list[InterfaceAddress]] = interface_addresses,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.announce = list(announce)
        self._interfaces = interfaces
        self._clock = clock
        self._cached: tuple[float, list[InterfaceAddress]] | None = None
        self._warned = False

    def _dialable(self, family: int) -> list[str]:
        now = self._clock()
        if self._cached is None or now - self._cached[0] > _INTERFACE_TTL:
            self._cached = (now, self._interfaces())
        return [a.address for a in self._cached[1] if a.family == family and a.dialable]

    def __call__(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        ports = [p for p in map(_tcp_port, candidates) if p is not None]
        out: list[multiaddr.Multiaddr] = []
        if self.announce:
            for addr in self.announce:
                if _tcp_port(addr) is None:
                    if not ports:
                        continue
                    addr = addr.encapsulate(multiaddr.Multiaddr(f"/tcp/{ports[0]}"))
                out.append(addr)
            return _unique(out)
        for addr in candidates:
            port = _tcp_port(addr)
            if not is_wildcard(addr) or port is None:
                out.append(addr)
                continue
            v6 = "ip6" in [p.name for p in addr.protocols()]
            family, proto = (socket.AF_INET6, "ip6") if v6 else (socket.AF_INET, "ip4")
            hosts = self._dialable(family)
            if not hosts:
                hosts = ["::1" if v6 else "127.0.0.1"]
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "listening on %s but this host has no %s address other hosts can "
                        "dial: advertising %s only; set --announce (FEDSTORE_ANNOUNCE)",
                        addr,
                        "IPv6" if v6 else "IPv4",
                        hosts[0],
                    )
            out.extend(multiaddr.Multiaddr(f"/{proto}/{h}/tcp/{port}") for h in hosts)
        return _unique(out)


def _unique(addrs: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    seen: set[str] = set()
    out: list[multiaddr.Multiaddr] = []
    for a in addrs:
        if str(a) not in seen:
            seen.add(str(a))
            out.append(a)
    return out

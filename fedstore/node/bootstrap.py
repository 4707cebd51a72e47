"""Keeping a node connected to its bootstrap peers, and saying in one line why it cannot.

Each configured bootstrap address gets a task (:meth:`BootstrapDialer.keep`)
that dials it, retrying with a doubling delay (0.25 s, then up to 5 s, and
up to 30 s once the failure has been reported), waits while the peer stays
connected, and dials again when it leaves: a trainer whose aggregator
restarts reconnects by itself. A bad address (not a peer multiaddr, this
node's own) is reported once and not retried.

When dialling has failed for ``report_after`` seconds the dialer emits one
:class:`~fedstore.node.events.BootstrapFailed` event whose reason is
:func:`explain`: what failed at which address, and what to check. The same
text ends :meth:`Node.wait_for_bootstrap`'s
:class:`~fedstore.errors.NetworkError` (what ``fedstore train`` and
``api.train`` show when the aggregator cannot be reached), so a peer that
cannot reach its bootstrap says so in one line instead of a traceback.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

import trio

from fedstore.errors import ConfigError, FedstoreError, NetworkError

__all__ = ["BootstrapDialer", "dial_reason", "explain"]

log = logging.getLogger(__name__)

FIRST_RETRY = 0.25
RETRY_CAP = 5.0
RETRY_CAP_AFTER_REPORT = 30.0
#: Dialling failures are reported (once per outage) after this many seconds.
REPORT_AFTER = 60.0

_REFUSED = {errno.ECONNREFUSED}
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}
_TIMEOUTS = {errno.ETIMEDOUT}


def _causes(exc: BaseException, depth: int = 0) -> Iterator[BaseException]:
    """*exc*, its causes and contexts, and the members of exception groups (bounded)."""
    if depth > 16:
        return
    yield exc
    for attr in ("exceptions", "errors"):  # exception groups; py-libp2p's MultiError
        inner = getattr(exc, attr, None)
        if isinstance(inner, Sequence) and not isinstance(inner, str | bytes):
            for sub in inner:
                if isinstance(sub, BaseException):
                    yield from _causes(sub, depth + 1)
    for nxt in (exc.__cause__, exc.__context__):
        if nxt is not None and nxt is not exc:
            yield from _causes(nxt, depth + 1)


def dial_reason(exc: BaseException) -> str:
    """A short name for why a dial failed: ``connection refused``, ``timed out`` ..."""
    for e in _causes(exc):
        if isinstance(e, OSError) and e.errno is not None:
            if e.errno in _REFUSED:
                return "connection refused"
            if e.errno in _UNREACHABLE:
                return "no route to host"
            if e.errno in _TIMEOUTS:
                return "timed out"
            return e.strerror or str(e)
        if isinstance(e, trio.TooSlowError):
            return "timed out"
    text = str(exc)
    if "timed out" in text:
        return "timed out"
    if "peer id" in text.lower() and "mismatch" in text.lower():
        return "another peer id answered"
    return text


def _host_port(addr: str) -> tuple[str, str]:
    parts = addr.strip("/").split("/")
    host = parts[1] if len(parts) > 1 else addr
    port = parts[3] if len(parts) > 3 and parts[2] == "tcp" else "?"
    return host, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def explain(addr: str, reason: str) -> str:
    """One line: what failed at *addr* and what to check."""
    host, port = _host_port(addr)
    if reason == "connection refused":
        hint = (
            f"nothing accepts connections on {host} port {port}: is the bootstrap node "
            "running, and listening on that address? A node listening on 127.0.0.1 cannot be "
            f"reached from other hosts (start it with --listen /ip4/0.0.0.0/tcp/{port})"
        )
    elif reason == "another peer id answered":
        hint = (
            f"a node answers on {host} port {port} but with another peer id: copy the "
            "bootstrap node's current address (a node's identity comes with its data directory)"
        )
    else:
        hint = (
            f"check that {host} is the address the bootstrap node printed and that this host "
            f"can reach it, and that no firewall blocks TCP port {port}"
        )
    if _is_loopback(host):
        hint += f"; {host} is a loopback address: it only reaches a node on this same host"
    return f"{reason}: {hint}"


class BootstrapDialer:
    """Keeps one node connected to its bootstrap addresses (see the module docstring).

    *connect(addr)* dials and returns the peer id (NetworkError/ConfigError);
    *connected()* lists connected peer ids; *changed()* returns an event set
    at the next connect or disconnect; *on_failed(addr, reason)* reports.
    """

    def __init__(
        self,
        connect: Callable[[str], Awaitable[str]],
        connected: Callable[[], list[str]],
        changed: Callable[[], trio.Event],
        on_failed: Callable[[str, str], None],
        *,
        report_after: float = REPORT_AFTER,
    ) -> None:
        self._connect = connect
        self._connected = connected
        self._changed = changed
        self._on_failed = on_failed
        self._report_after = report_after
        #: the latest failure per address (``explain`` text), cleared on success
        self.failures: dict[str, str] = {}

    async def keep(self, addr: str) -> None:
        """Dial *addr* until connected; dial again whenever its peer leaves. Runs forever."""
        while True:
            peer = await self._dial_until_connected(addr)
            if peer is None:
                return
            while peer in self._connected():
                await self._changed().wait()
            log.info("bootstrap peer %s left; dialling %s again", peer, addr)

    async def _dial_until_connected(self, addr: str) -> str | None:
        delay, cap, started = FIRST_RETRY, RETRY_CAP, trio.current_time()
        reported = False
        while True:
            try:
                peer = await self._connect(addr)
            except ConfigError as exc:
                self.failures[addr] = str(exc)
                self._on_failed(addr, str(exc))
                return None
            except FedstoreError as exc:
                why = explain(addr, dial_reason(exc))
                self.failures[addr] = why
                if not reported and trio.current_time() - started >= self._report_after:
                    reported, cap = True, RETRY_CAP_AFTER_REPORT
                    self._on_failed(addr, why)
                log.info("bootstrap %s not reachable yet (%s); retrying", addr, why)
            else:
                self.failures.pop(addr, None)
                if reported:
                    log.warning("bootstrap %s reached after all", addr)
                return peer
            await trio.sleep(delay)
            delay = min(delay * 2, cap)

    def error(self, addrs: Sequence[str], timeout: float) -> NetworkError:
        """The one-line error for 'no bootstrap peer reached within *timeout* seconds'."""
        tried = [a for a in addrs if a in self.failures] or list(addrs)
        first = tried[0]
        why = self.failures.get(first) or explain(first, "no answer yet")
        more = f" (and {len(tried) - 1} more address(es))" if len(tried) > 1 else ""
        return NetworkError(f"cannot reach bootstrap {first}{more} after {timeout:g} s: {why}")

"""What a running node reports: one frozen dataclass per kind of event.

:class:`~fedstore.node.Node` calls its ``on_event`` callback
(:data:`EventSink`) with these objects, synchronously, from the trio loop;
a callback must be quick and must not raise. The fields are typed data
(rounds are ``int``, CIDs and peer ids ``str``); nothing here is text to
parse. ``fedstore node`` renders them as ``KEY=value`` status lines with
:func:`fedstore.node.status.status_line` (docs/NODE.md lists the keys), and
:func:`fedstore.node.status.parse_status` reads such lines back.

Importing this module is cheap (standard library only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Announced",
    "AutoSyncFailed",
    "BootstrapFailed",
    "Dropped",
    "EventSink",
    "HeadReceived",
    "Heard",
    "Listening",
    "NodeEvent",
    "NodeStarted",
    "PeerConnected",
    "PeerDisconnected",
    "Published",
    "Received",
    "Resumed",
    "Saved",
    "SyncFailed",
    "Synced",
    "TopicJoined",
    "TopicLeft",
]


# -- start -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStarted:
    """The host is up with this identity (first event of every node)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class Listening:
    """One address peers can dial, ``/ip4/../tcp/../p2p/<peer id>`` (one event per address)."""

    addr: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """The node found local checkpoints at start; *round* is the latest."""

    round: int


# -- peers and topics ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """The first connection to *peer* opened (inbound or outbound)."""

    peer: str


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """The last connection to *peer* closed."""

    peer: str


@dataclass(frozen=True, slots=True)
class TopicJoined:
    topic: str


@dataclass(frozen=True, slots=True)
class TopicLeft:
    topic: str


# -- messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """This node published *size* bytes on *topic*; *cid* is set when they went by reference.

    *digest* is the first 16 hex digits of the payload's SHA-256.
    """

    topic: str
    size: int
    digest: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """A validated message from *peer* (payloads sent by reference already fetched)."""

    topic: str
    peer: str
    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """Bad input from *peer* on *topic* was dropped for *reason* (see docs/NODE.md)."""

    topic: str
    reason: str
    peer: str


# -- checkpoints -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Saved:
    """A checkpoint was stored locally."""

    round: int
    cid: str


@dataclass(frozen=True, slots=True)
class Announced:
    """This node announced ``CID:<round>:<cid>`` on ``model-cids``."""

    round: int
    cid: str


@dataclass(frozen=True, slots=True)
class Heard:
    """A valid announcement, reported the first time for this (round, CID, sender)."""

    round: int
    cid: str
    peer: str


@dataclass(frozen=True, slots=True)
class HeadReceived:
    """*peer* answered a head request (``/fedstore/head/1.0.0``) with its latest checkpoint."""

    round: int
    cid: str
    peer: str


@dataclass(frozen=True, slots=True)
class Synced:
    """``sync`` finished with the node holding the latest known round."""

    round: int
    cid: str


# -- failures --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncFailed:
    """Newer rounds exist but none of the *failures* candidates could be fetched.

    *first* describes the first failure.
    """

    failures: int
    first: str


@dataclass(frozen=True, slots=True)
class AutoSyncFailed:
    """A background sync (``--auto-sync``) raised; *reason* is the error's message."""

    reason: str


@dataclass(frozen=True, slots=True)
class BootstrapFailed:
    """Dialling bootstrap peer *addr* failed for good (bad address, or retries exhausted)."""

    addr: str
    reason: str


NodeEvent = (
    NodeStarted
    | Listening
    | Resumed
    | PeerConnected
    | PeerDisconnected
    | TopicJoined
    | TopicLeft
    | Published
    | Received
    | Dropped
    | Saved
    | Announced
    | Heard
    | HeadReceived
    | Synced
    | SyncFailed
    | AutoSyncFailed
    | BootstrapFailed
)
#: The ``on_event`` callback of :func:`~fedstore.node.open_node`.
EventSink = Callable[[NodeEvent], None]

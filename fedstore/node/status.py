"""Node events as ``KEY=value`` status lines, and back.

``fedstore node`` prints one line per event (:func:`status_line`) when it
runs without a terminal; :class:`fedstore.node.driver.NodeProcess` and other
programs read them back (:func:`parse_status`). docs/NODE.md documents the
format; this module is its one implementation. Fields are joined with ``:``
and parsed from the right, so a topic may itself contain ``:`` (peer ids,
CIDs, digests and numbers never do). Values never contain a newline: the
renderer replaces newlines in free text with spaces.

Importing this module is cheap (standard library only).
"""

from __future__ import annotations

import re

from fedstore.node.events import (
    Announced,
    AutoSyncFailed,
    BootstrapFailed,
    Dropped,
    HeadReceived,
    Heard,
    Listening,
    NodeEvent,
    NodeStarted,
    PeerConnected,
    PeerDisconnected,
    Published,
    Received,
    Resumed,
    Saved,
    Synced,
    SyncFailed,
    TopicJoined,
    TopicLeft,
)

__all__ = ["EVENT_KEYS", "parse_status", "status_line"]

#: Every key a node event renders to (command output uses further keys, see docs/NODE.md).
EVENT_KEYS = frozenset(
    {
        "PEER_ID",
        "LISTENING",
        "RESUMED",
        "CONNECTED",
        "DISCONNECTED",
        "JOINED",
        "LEFT",
        "PUBLISHED",
        "RECEIVED",
        "DROPPED",
        "SAVED",
        "ANNOUNCED",
        "HEARD",
        "HEAD",
        "SYNCED",
        "ERROR",
    }
)

_DIGEST = re.compile(r"[0-9a-f]{16}")
_SYNC_FAILED = re.compile(r"sync: (\d+) candidate\(s\) failed: (.*)", re.DOTALL)


def _text(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def status_line(event: NodeEvent) -> tuple[str, str]:
    """``(KEY, value)`` of *event*; the line is ``f"{KEY}={value}"``."""
    match event:
        case NodeStarted(peer_id):
            return "PEER_ID", peer_id
        case Listening(addr):
            return "LISTENING", addr
        case Resumed(round):
            return "RESUMED", str(round)
        case PeerConnected(peer):
            return "CONNECTED", peer
        case PeerDisconnected(peer):
            return "DISCONNECTED", peer
        case TopicJoined(topic):
            return "JOINED", topic
        case TopicLeft(topic):
            return "LEFT", topic
        case Published(topic, size, digest, cid):
            return "PUBLISHED", f"{topic}:{size}:{digest}" + (f":{cid}" if cid else "")
        case Received(topic, peer, size, digest):
            return "RECEIVED", f"{topic}:{peer}:{size}:{digest}"
        case Dropped(topic, reason, peer):
            return "DROPPED", f"{topic}:{reason}:{peer}"
        case Saved(round, cid):
            return "SAVED", f"{round}:{cid}"
        case Announced(round, cid):
            return "ANNOUNCED", f"{round}:{cid}"
        case Heard(round, cid, peer):
            return "HEARD", f"{round}:{cid}:{peer}"
        case HeadReceived(round, cid, peer):
            return "HEAD", f"{round}:{cid}:{peer}"
        case Synced(round, cid):
            return "SYNCED", f"{round}:{cid}"
        case SyncFailed(failures, first):
            return "ERROR", _text(f"sync: {failures} candidate(s) failed: {first}")
        case AutoSyncFailed(reason):
            return "ERROR", _text(f"auto-sync: {reason}")
        case BootstrapFailed(addr, reason):
            return "ERROR", _text(f"bootstrap {addr}: {reason}")
    raise TypeError(f"not a node event: {event!r}")


def parse_status(key: str, value: str) -> NodeEvent | None:
    """The node event a status line reports; None for command output and other lines.

    ``SYNCED=none``, ``HEAD=none`` and ``ERROR=`` lines of failed commands are
    command output, so they give None too. Raises ``ValueError`` for a
    node-event key whose value is malformed.
    """
    if key not in EVENT_KEYS:
        return None
    try:
        return _parse(key, value)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"malformed status line {key}={value[:80]!r}") from exc


def _parse(key: str, value: str) -> NodeEvent | None:
    if key == "PEER_ID":
        return NodeStarted(value)
    if key == "LISTENING":
        return Listening(value)
    if key == "RESUMED":
        return Resumed(int(value))
    if key == "CONNECTED":
        return PeerConnected(value)
    if key == "DISCONNECTED":
        return PeerDisconnected(value)
    if key == "JOINED":
        return TopicJoined(value)
    if key == "LEFT":
        return TopicLeft(value)
    if key == "PUBLISHED":
        head, last = value.rsplit(":", 1)
        if _DIGEST.fullmatch(last):  # <topic>:<size>:<digest>
            topic, size = head.rsplit(":", 1)
            return Published(topic, int(size), last)
        topic, size, digest = head.rsplit(":", 2)  # <topic>:<size>:<digest>:<cid>
        return Published(topic, int(size), digest, last)
    if key == "RECEIVED":
        topic, peer, size, digest = value.rsplit(":", 3)
        return Received(topic, peer, int(size), digest)
    if key == "DROPPED":
        topic, reason, peer = value.rsplit(":", 2)
        return Dropped(topic, reason, peer)
    if key in ("SAVED", "ANNOUNCED", "SYNCED"):
        if value == "none":
            return None
        round, cid = value.split(":")
        if key == "SAVED":
            return Saved(int(round), cid)
        return Announced(int(round), cid) if key == "ANNOUNCED" else Synced(int(round), cid)
    if key in ("HEARD", "HEAD"):
        if value == "none":
            return None
        round, cid, peer = value.split(":")
        return (Heard if key == "HEARD" else HeadReceived)(int(round), cid, peer)
    return _parse_error(value)


def _parse_error(value: str) -> NodeEvent | None:
    if m := _SYNC_FAILED.fullmatch(value):
        return SyncFailed(int(m.group(1)), m.group(2))
    if value.startswith("auto-sync: "):
        return AutoSyncFailed(value.removeprefix("auto-sync: "))
    if value.startswith("bootstrap ") and ": " in value:
        addr, reason = value.removeprefix("bootstrap ").split(": ", 1)
        if " " not in addr:
            return BootstrapFailed(addr, reason)
    return None  # a failed command's message

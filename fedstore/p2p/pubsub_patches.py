"""A pubsub memory fix for py-libp2p 0.8.1, carried until upstream.

``GossipSub._check_equivocation`` (gossipsub 2.0's "same sender and seqno,
different content" check) keeps **every validated message whole** in
``GossipSub.equivocation_detection``, keyed by sender + seqno, and the
periodic cleanup trims it only past 1,000 entries (back to 500). A peer
sending valid 700 KiB envelopes at 20/s, inside its allowance, took a node
from 132 to 715 MiB, never released (1,000 x 700 KiB, ~700 MiB, steady).

:func:`apply` replaces the check with one that keeps a 16-byte BLAKE2b digest
of (data, topics) per key instead of the message, in insertion order, capped
at :data:`EQUIVOCATION_ENTRIES` keys (the oldest go first): same verdicts,
O(entries) memory instead of O(bytes). The wire and the scoring are
unchanged. Applied once per process, only on the py-libp2p release it was
written against (:data:`PATCHED_VERSION`); ``FEDSTORE_LIBP2P_PATCHES=0``
leaves py-libp2p alone (for before/after measurements).
"""

from __future__ import annotations

import hashlib
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["EQUIVOCATION_ENTRIES", "PATCHED_VERSION", "apply", "applied"]

log = logging.getLogger(__name__)

#: The py-libp2p release this patch was written and tested against.
PATCHED_VERSION = "0.8.1"
#: Sender+seqno keys remembered by the equivocation check (~150 bytes each).
EQUIVOCATION_ENTRIES = 10_000

_applied = False


def applied() -> bool:
    """Whether :func:`apply` patched py-libp2p in this process."""
    return _applied


def _installed_version() -> str | None:
    try:
        return version("libp2p")
    except PackageNotFoundError:
        return None


def content_digest(msg: Any) -> bytes:
    """16-byte digest of what equivocation compares: the data and the topics."""
    h = hashlib.blake2b(digest_size=16)
    h.update(len(msg.data).to_bytes(8, "big"))
    h.update(msg.data)
    for topic in msg.topicIDs:
        h.update(b"\x00" + topic.encode("utf-8", "surrogatepass"))
    return h.digest()


def apply() -> bool:
    """Patch ``GossipSub._check_equivocation`` (idempotent); False if not applied."""
    global _applied
    if _applied:
        return True
    if os.environ.get("FEDSTORE_LIBP2P_PATCHES", "1").strip().lower() in ("0", "false", "no"):
        return False
    found = _installed_version()
    if found != PATCHED_VERSION:
        log.info(
            "py-libp2p %s is installed; the pubsub memory patch is for %s and is not applied",
            found,
            PATCHED_VERSION,
        )
        return False
    from libp2p.peer.id import ID
    from libp2p.pubsub import gossipsub as gs

    logger = gs.logger

    def _check_equivocation(self: Any, msg: Any) -> bool:
        key = msg.from_id + msg.seqno
        seen: dict[bytes, Any] = self.equivocation_detection
        digest = content_digest(msg)
        first = seen.get(key)
        if first is None:
            seen[key] = digest
            while len(seen) > EQUIVOCATION_ENTRIES:
                del seen[next(iter(seen))]
            return True
        if first != digest:
            logger.warning("Equivocation detected from peer %s", ID(msg.from_id))
            if self.scorer is not None:
                self.scorer.penalize_equivocation(ID(msg.from_id), 100.0)
            return False
        return True

    gs.GossipSub._check_equivocation = _check_equivocation  # type: ignore[method-assign]
    _applied = True
    return True

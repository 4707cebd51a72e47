"""Pubsub fixes for py-libp2p 0.8.1 (memory and fairness under a flood), carried until upstream.

1. **Equivocation memory.** ``GossipSub._check_equivocation`` (gossipsub 2.0's
   "same sender and seqno, different content" check) keeps **every validated
   message whole** in ``GossipSub.equivocation_detection``, keyed by sender +
   seqno, and the periodic cleanup trims it only past 1,000 entries (back to
   500). A peer sending valid 700 KiB envelopes at 20/s, inside its
   allowance, took a node from 132 to 715 MiB, never released. The patched
   check keeps a 16-byte BLAKE2b digest of (data, topics) per key instead,
   in insertion order, capped at :data:`EQUIVOCATION_ENTRIES` keys (the
   oldest go first): same verdicts, O(entries) memory instead of O(bytes).
2. **One message at a time per peer stream.** ``Pubsub.continuously_read_stream``
   starts a new task for every message of every RPC it reads (``push_msg``:
   signature check, validators, forwarding) and reads on at once, so a
   peer writing RPCs of 100 messages as fast as its stream takes them makes
   the node run thousands of tasks at once: every other task of the node
   (a head answer, a command at the prompt) waits its turn among them (a
   head request took 1.7 s, median, during a 10,000-message flood at load
   average 7), and a blocked task costs memory per message. The patched
   loop handles a peer's messages in order, one at a time, before reading
   its next RPC, and lets other tasks run after each message: per peer there
   is one task, and a flooding peer's stream (and TCP window) fills instead
   of the node's run queue. Other peers'
   streams are read by their own tasks, as before. The rest of the loop is
   upstream's, line for line.

The wire and the scoring are unchanged. Applied once per process, only on
the py-libp2p release they were written against (:data:`PATCHED_VERSION`);
``FEDSTORE_LIBP2P_PATCHES=0`` leaves py-libp2p alone (for before/after
measurements).
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
    """Patch the equivocation check and the pubsub read loop (idempotent); False if not."""
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
    _patch_read_loop()
    _applied = True
    return True


def _patch_read_loop() -> None:
    import trio
    from libp2p.io.exceptions import IOException, MessageTooLarge
    from libp2p.network.connection.exceptions import RawConnError
    from libp2p.network.stream.exceptions import StreamEOF, StreamError
    from libp2p.pubsub import pubsub as ps
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.utils import maybe_consume_signed_record
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited

    logger = ps.logger
    gossipsub_event = ps.GossipsubEvent

    async def continuously_read_stream(self: Any, stream: Any) -> None:
        peer_id = stream.muxed_conn.peer_id
        try:
            while self.manager.is_running:
                incoming: bytes = await read_varint_prefixed_bytes_limited(
                    stream, self.max_inbound_rpc_size
                )
                rpc_incoming = rpc_pb2.RPC()
                rpc_incoming.ParseFromString(incoming)
                if not maybe_consume_signed_record(rpc_incoming, self.host, peer_id):
                    logger.error("Received an invalid-signed-record, ignoring the incoming msg")
                    continue
                event = gossipsub_event()
                event.peer_id = peer_id.pretty()
                event.message_size = len(incoming)
                if rpc_incoming.publish:
                    event.publish = True
                    for msg in rpc_incoming.publish:
                        if not self._is_subscribed_to_msg(msg):
                            continue
                        if not self.manager.is_running:
                            break
                        # fedstore: in order, in this task (upstream starts one task each),
                        # letting other tasks run after each (a message the validators drop
                        # reaches no checkpoint of its own)
                        await self.push_msg(peer_id, msg)
                        await trio.lowlevel.checkpoint()
                if rpc_incoming.subscriptions:
                    event.subopts = True
                    if len(rpc_incoming.subscriptions) > self.max_subscriptions_per_rpc:
                        logger.warning(
                            "Peer %s sent %d subscriptions exceeding limit %d, "
                            "rejecting subscriptions",
                            peer_id,
                            len(rpc_incoming.subscriptions),
                            self.max_subscriptions_per_rpc,
                        )
                    else:
                        for message in rpc_incoming.subscriptions:
                            self.handle_subscription(peer_id, message)
                if rpc_incoming.HasField("control"):
                    event.control = True
                    await self.router.handle_rpc(rpc_incoming, peer_id)
                if stream.metric_send_channel is not None:
                    await stream.metric_send_channel.send(event)
        except MessageTooLarge as error:
            logger.warning(
                "Inbound pubsub RPC from peer %s exceeded size limit: %s", peer_id, error
            )
            try:
                await stream.reset()
            except Exception as exc:  # the stream may be gone already
                logger.debug("resetting the stream of %s failed: %s", peer_id, exc)
            self._handle_dead_peer(peer_id)
        except StreamEOF:
            logger.debug("Stream closed for peer %s, exiting read loop cleanly.", peer_id)
        except StreamError as e:
            logger.debug("Stream error for peer %s (normal during shutdown): %s", peer_id, e)
        except (IOException, RawConnError) as e:
            logger.debug("Connection closed for peer %s during read: %s", peer_id, e)

    ps.Pubsub.continuously_read_stream = continuously_read_stream  # type: ignore[method-assign]

"""fedstore's peer-to-peer layer: libp2p host, topics, wire codecs, head protocol, sync.

It knows nothing of training. :mod:`fedstore.node` composes it with the local
store, the catalog and the backend chain into a :class:`~fedstore.node.Node`
(see docs/NODE.md). Only :mod:`fedstore.p2p.host` builds py-libp2p services.
"""

from fedstore.p2p.headproto import HEAD_PROTOCOL, PeerHead
from fedstore.p2p.messages import (
    ANNOUNCE_TOPIC,
    TRAINING_TOPIC,
    Announcement,
    WireFormatError,
    format_announcement,
    parse_announcement,
)
from fedstore.p2p.sync import Head
from fedstore.p2p.topics import Subscription, TopicMessage

__all__ = [
    "ANNOUNCE_TOPIC",
    "HEAD_PROTOCOL",
    "TRAINING_TOPIC",
    "Announcement",
    "Head",
    "PeerHead",
    "Subscription",
    "TopicMessage",
    "WireFormatError",
    "format_announcement",
    "parse_announcement",
]

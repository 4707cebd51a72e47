"""fedstore's peer-to-peer layer: libp2p host, topics, wire codecs, head protocol, sync.

It knows nothing of training. :mod:`fedstore.node` composes it with the local
store, the catalog and the backend chain into a :class:`~fedstore.node.Node`
(see docs/NODE.md). Only :mod:`fedstore.p2p.host` builds py-libp2p services.

Importing this package is cheap: the codecs are pure, and names that need
py-libp2p (about a second to import) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedstore.p2p.messages import (
    ANNOUNCE_TOPIC,
    TRAINING_TOPIC,
    Announcement,
    WireFormatError,
    format_announcement,
    parse_announcement,
)

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

_LAZY = {
    "HEAD_PROTOCOL": "fedstore.p2p.headproto",
    "PeerHead": "fedstore.p2p.headproto",
    "Head": "fedstore.p2p.sync",
    "Subscription": "fedstore.p2p.topics",
    "TopicMessage": "fedstore.p2p.topics",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
